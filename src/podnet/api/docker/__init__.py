"""Docker front end: podnet as a libnetwork remote network driver and IPAM driver.

protocol.py   the wire format dockerd 20.10 speaks (TypedDicts, option keys, validation)
plugin.py     HTTP/1.1 on a unix socket: router, bounded server, socket claim
handlers.py   the routing table: handshake answers, one route per backend method
backend.py    the DockerBackend protocol that the resource layer implements
"""
