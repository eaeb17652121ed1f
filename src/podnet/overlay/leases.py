"""Host subnet leases (flannel's subnet manager) over the store.

A lease is a TTL'd key per (network, host subnet), created with create-if-absent, so
two racing agents never get the same subnet. Beside it, a node record without TTL
remembers the node's subnet and VTEP MAC, so an agent that restarts (or whose lease
expired while it was down and nobody took the subnet) gets both back.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from podnet import keys
from podnet.errors import POOL_EXHAUSTED, Conflict, PodnetError
from podnet.overlay.config import OverlayConfig
from podnet.store import Store


@dataclass
class Lease:
    network: str
    node: str
    subnet: str
    public_ip: str
    backend: dict[str, Any] = field(default_factory=dict)  # vtep_mac, vni, port, type
    revision: int = 0

    def to_value(self) -> dict[str, Any]:
        return {"network": self.network, "node": self.node, "subnet": self.subnet,
                "public_ip": self.public_ip, "backend": self.backend, "renewed": time.time()}

    @classmethod
    def from_entry(cls, value: dict[str, Any], revision: int) -> Lease:
        return cls(value["network"], value["node"], value["subnet"], value["public_ip"],
                   dict(value.get("backend") or {}), revision)


def list_leases(store: Store, network: str) -> list[Lease]:
    return [Lease.from_entry(e.value, e.revision) for e in store.list(keys.lease_prefix(network))]


def remembered(store: Store, network: str, node: str) -> dict[str, Any] | None:
    entry = store.get(keys.node(network, node))
    return entry.value if entry else None


def acquire(
    store: Store, cfg: OverlayConfig, node: str, public_ip: str, backend: dict[str, Any],
    ttl: float,
) -> Lease:
    """Lease a host subnet: the remembered one if still free or ours, else a free one."""
    memory = remembered(store, cfg.network, node) or {}
    wanted = memory.get("subnet")
    for _attempt in range(32):
        leases = {lease.subnet: lease for lease in list_leases(store, cfg.network)}
        mine = [lease for lease in leases.values() if lease.node == node]
        if mine:
            wanted = mine[0].subnet
        if wanted and wanted in cfg.subnets():
            current = leases.get(wanted)
            if current is None or current.node == node:
                lease = Lease(cfg.network, node, wanted, public_ip, backend)
                try:
                    lease.revision = store.put(
                        keys.lease(cfg.network, wanted), lease.to_value(),
                        revision=current.revision if current else 0, ttl=ttl,
                    )
                except Conflict:
                    continue
                _remember(store, cfg.network, node, lease)
                return lease
            wanted = None  # taken by another node after our lease expired
        candidate = _free_subnet(store, cfg, set(leases), node)
        lease = Lease(cfg.network, node, candidate, public_ip, backend)
        try:
            lease.revision = store.put(
                keys.lease(cfg.network, candidate), lease.to_value(), revision=0, ttl=ttl)
        except Conflict:
            continue
        _remember(store, cfg.network, node, lease)
        return lease
    raise PodnetError(11, "could not lease a host subnet (too many conflicts)", cfg.network)


def _free_subnet(store: Store, cfg: OverlayConfig, leased: set[str], node: str) -> str:
    """A free subnet, preferring ones no other node remembers as its own."""
    others = {
        e.value.get("subnet") for e in store.list(f"{keys.NODES}{cfg.network}/")
        if not e.key.endswith("/" + node)
    }
    free = [s for s in cfg.subnets() if s not in leased]
    if not free:
        raise PodnetError(POOL_EXHAUSTED, "no free host subnet left", str(cfg.cidr))
    fresh = [s for s in free if s not in others]
    pool = fresh or free
    return pool[0] if len(pool) < 4 else random.choice(pool[: max(4, len(pool) // 8)])


def _remember(store: Store, network: str, node: str, lease: Lease) -> None:
    value = {"subnet": lease.subnet, "public_ip": lease.public_ip, **lease.backend}
    store.put(keys.node(network, node), value)


def renew(store: Store, lease: Lease, ttl: float) -> Lease:
    """Extend our lease; Conflict if it expired and somebody else holds the subnet now."""
    key = keys.lease(lease.network, lease.subnet)
    current = store.get(key)
    if current is not None and current.value.get("node") != lease.node:
        raise Conflict(key)
    lease.revision = store.put(
        key, lease.to_value(), revision=current.revision if current else 0, ttl=ttl)
    return lease


def release(store: Store, lease: Lease) -> None:
    key = keys.lease(lease.network, lease.subnet)
    current = store.get(key)
    if current is not None and current.value.get("node") == lease.node:
        store.delete(key)
