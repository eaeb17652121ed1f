"""`podnet bench`: the 2015 study's evaluation, rebuilt on real kernel paths.

endpoint (where commands run) -> runners (iperf3, sockperf, ping) -> scenarios (the
study's matrix as lab paths) -> run (rounds over all paths) -> results (summaries, the
study's table, six observations) -> report / charts / compare. See docs in run.py and
scenarios.py for why it is shaped this way.
"""
