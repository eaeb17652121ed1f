"""The `udp` backend's datapath: a TUN device plus a userspace UDP forwarder process.

forwarder.py is the process (one per host, detached from the agent); control.py is what
the agent calls to start it, push the peer table and stop it.
"""
