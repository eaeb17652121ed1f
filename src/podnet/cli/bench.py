"""`podnet bench ...`: run the study's matrix, or compare two result files.

Why a progress bar on stderr-like transient output and tables at the end: a full run
takes half an hour; the bar says where it is, the tables are what one keeps.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any


def _console():  # type: ignore[no-untyped-def]
    """A terminal's own width; 160 columns into a pipe or file (rich would pick 80)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from podnet.bench import report
    from podnet.bench.run import Bench, Settings

    settings = Settings.make(quick=args.quick, seconds=args.seconds, repeats=args.repeats,
                             pin=args.pin, only=args.only, prefix=args.prefix)
    console = _console()

    def on_term(signum: int, frame: Any) -> None:  # clean up like Ctrl-C does
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    bench = Bench(settings)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("podnet bench", total=bench.steps())

            def step(desc: str, n: int) -> None:
                progress.update(task, description=desc, advance=n)

            bench.progress = step
            doc = bench.run()
    finally:
        signal.signal(signal.SIGTERM, old)
    report.print_report(doc, console)
    if args.out:
        files = report.write(doc, args.out)
        console.print(f"wrote {', '.join(files)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from podnet.bench.compare import load, print_compare

    print_compare(load(args.a), load(args.b), _console())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from podnet.bench import report
    from podnet.bench.compare import load

    doc = load(args.file)
    console = _console()
    report.print_report(doc, console)
    if args.out:
        console.print(f"wrote {', '.join(report.write(doc, args.out))}")
    return 0


def add_bench_commands(subparsers: Any) -> None:
    """`podnet bench [options]` and `podnet bench compare A.json B.json`."""
    desc = ("Measure the 2015 study's traffic paths (server, VM, container; flat / VLAN / "
            "VXLAN; MTU, streams, double overlay, udp vs vxlan, proxy NAT, bridge) in "
            "labs of namespaces, and print them beside the study's figures.")
    b = subparsers.add_parser("bench", help="the 2015 study's evaluation on this machine",
                              description=desc)
    b.set_defaults(fn=cmd_bench)
    b.add_argument("--quick", action="store_true",
                   help="every path, one repeat, 2 s runs, no UDP RR (about two minutes)")
    b.add_argument("--only", metavar="PATTERN",
                   help="only these paths (comma-separated globs or substrings)")
    b.add_argument("--out", metavar="DIR", help="write results.json, report.md and charts")
    b.add_argument("--seconds", type=int, help="length of each run (default 10, quick 2)")
    b.add_argument("--repeats", type=int, help="rounds over all paths (default 3, quick 1)")
    b.add_argument("--pin", action="store_true",
                   help="pin latency ends to CPU 0, iperf3 ends to CPUs 0 and 1 (taskset)")
    b.add_argument("--prefix", help=argparse.SUPPRESS)  # namespace prefix (tests)
    sub = b.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    c = sub.add_parser("compare", help="two results.json files side by side",
                       description="Two runs side by side, with B ÷ A for every figure.")
    c.add_argument("a", metavar="A.json")
    c.add_argument("b", metavar="B.json")
    c.set_defaults(fn=cmd_compare)
    s = sub.add_parser("show", help="print a results.json again (and rewrite its report)",
                       description="Print the tables of a results.json; with --out, "
                       "write report.md and the charts again.")
    s.add_argument("file", metavar="RESULTS.json")
    s.add_argument("--out", metavar="DIR")
    s.set_defaults(fn=cmd_show)


register = add_bench_commands
