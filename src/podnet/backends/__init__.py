"""Host-to-host backends: how hosts reach each other's pods.

`overlay/` holds flannel's shape (a leased subnet per host, routed between hosts:
vxlan, host-gw, udp). Backends never plug pods (that is `drivers/`) and never touch the
store: the agent's keepers hand them leases and peers.
"""
