"""Deterministic kernel object names (interfaces are limited to 15 characters)."""

from __future__ import annotations

import hashlib


def _h(*parts: str, n: int) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:n]


def bridge_name(network: str) -> str:
    if len(network) <= 10 and network.replace("-", "").isalnum():
        return f"pnbr-{network}"
    return f"pnbr-{_h(network, n=10)}"


def host_veth_name(container_id: str, ifname: str) -> str:
    return f"pnv{_h(container_id, ifname, n=12)}"
