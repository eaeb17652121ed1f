"""Deterministic kernel object names (interfaces are limited to 15 characters)."""

from __future__ import annotations

import hashlib

IFNAMSIZ = 15


def _h(*parts: str, n: int) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:n]


def bridge_name(network: str) -> str:
    if len(network) <= 10 and network.replace("-", "").isalnum():
        return f"pnbr-{network}"
    return f"pnbr-{_h(network, n=10)}"


def host_veth_name(container_id: str, ifname: str) -> str:
    return f"pnv{_h(container_id, ifname, n=12)}"


def waiting_veth_name(container_id: str, ifname: str) -> str:
    """A pod end waiting in the host namespace to be moved into its sandbox."""
    return f"pnc{_h(container_id, ifname, n=12)}"


# Every kind of kernel object podnet names, by prefix: `podnet cleanup` and the lab's
# teardown find leftovers from this one registry (a new kind adds its prefix here).
LINK_PREFIXES: dict[str, str] = {
    "pnv": "a pod's veth (host end)",
    "pnc": "a pod's veth waiting in the host namespace",
    "pnbr-": "a network's bridge",
    "pnvx": "an overlay's VXLAN device",
    "pntun": "the udp backend's TUN device",
}
NETNS_PREFIXES: dict[str, str] = {
    "pn-pod-": "a pod namespace made by `podnet pod add`",
}
