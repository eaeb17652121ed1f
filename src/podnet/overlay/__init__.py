"""Multi-host overlays in flannel's model: a cluster CIDR split into per-host subnets,
each leased by one host's agent, and a backend that routes between them."""
