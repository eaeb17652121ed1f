"""Host subnet leases (flannel's subnet manager) over the store.

A lease is a TTL'd key per (network, host subnet), created with create-if-absent, so
two racing agents never get the same subnet. Beside it, a node record without TTL
remembers the node's subnet, pod MTU and backend data (the VTEP MAC), so an agent that
restarts (or whose lease expired while it was down and nobody took the subnet) gets them
back, and a CNI call served without the agent knows the host's subnet and pod MTU.
"""

from __future__ import annotations

import builtins
import random
import time
from typing import Any

from podnet import keys
from podnet.errors import POOL_EXHAUSTED, TRY_AGAIN_LATER, Conflict, PodnetError
from podnet.resources.base import HostLease, LeaseEvent
from podnet.store import Store, Watch


def _lease_value(lease: HostLease) -> dict[str, Any]:
    return {"network": lease.network, "node": lease.node, "subnet": lease.subnet,
            "public_ip": lease.public_ip, "pod_mtu": lease.pod_mtu, "backend": lease.backend,
            "renewed": time.time()}


def lease_from_value(value: dict[str, Any], revision: int) -> HostLease:
    backend = dict(value.get("backend") or {})
    pod_mtu = value.get("pod_mtu", backend.pop("pod_mtu", None))  # schema 1 kept it there
    backend.pop("pod_mtu", None)
    return HostLease(value["network"], value["node"], value["subnet"], value["public_ip"],
                     pod_mtu, backend, revision)


def node_from_value(network: str, node: str, value: dict[str, Any]) -> HostLease:
    if "backend" in value:
        backend = dict(value["backend"] or {})
    else:  # schema 1: backend data flattened into the record
        backend = {k: v for k, v in value.items()
                   if k not in ("subnet", "public_ip", "pod_mtu")}
    return HostLease(network, node, value.get("subnet", ""), value.get("public_ip", ""),
                     value.get("pod_mtu"), backend)


class _StoreLeaseWatch:
    def __init__(self, watch: Watch) -> None:
        self._watch = watch

    def next_batch(self, timeout: float) -> list[LeaseEvent]:
        out = []
        for ev in self._watch.next_batch(timeout):
            subnet = keys.subnet_of_lease_key(ev.key)
            if ev.kind == "put" and ev.value:
                out.append(LeaseEvent("put", subnet, lease_from_value(ev.value, ev.revision)))
            elif ev.kind == "delete":
                out.append(LeaseEvent("delete", subnet, None))
        return out

    def close(self) -> None:
        self._watch.close()


class StoreLeases:
    """HostLeases on podnet's store (also used in Kuryr mode: Neutron has no leases)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, network: str) -> builtins.list[HostLease]:
        return [lease_from_value(e.value, e.revision)
                for e in self.store.list(keys.lease_prefix(network))]

    def remembered(self, network: str, node: str) -> HostLease | None:
        entry = self.store.get(keys.node(network, node))
        return node_from_value(network, node, entry.value) if entry else None

    def watch(self, network: str, start_revision: int) -> _StoreLeaseWatch:
        return _StoreLeaseWatch(self.store.watch(keys.lease_prefix(network),
                                                 start_revision=start_revision))

    def acquire(self, network: str, candidates: builtins.list[str], node: str, public_ip: str,
                pod_mtu: int | None, backend: dict[str, Any], ttl: float) -> HostLease:
        """Lease a host subnet: the remembered one if still free or ours, else a free one."""
        memory = self.remembered(network, node)
        wanted = memory.subnet if memory else None
        allowed = set(candidates)
        for _attempt in range(32):
            leases = {lease.subnet: lease for lease in self.list(network)}
            mine = [lease for lease in leases.values() if lease.node == node]
            if mine:
                wanted = mine[0].subnet
            if wanted and wanted in allowed:
                current = leases.get(wanted)
                if current is None or current.node == node:
                    lease = HostLease(network, node, wanted, public_ip, pod_mtu, backend)
                    try:
                        lease.revision = self.store.put(
                            keys.lease(network, wanted), _lease_value(lease),
                            revision=current.revision if current else 0, ttl=ttl)
                    except Conflict:
                        continue
                    self._remember(lease)
                    return lease
                wanted = None  # taken by another node after our lease expired
            candidate = self._free_subnet(network, candidates, set(leases), node)
            lease = HostLease(network, node, candidate, public_ip, pod_mtu, backend)
            try:
                lease.revision = self.store.put(keys.lease(network, candidate),
                                                _lease_value(lease), revision=0, ttl=ttl)
            except Conflict:
                continue
            self._remember(lease)
            return lease
        raise PodnetError(TRY_AGAIN_LATER, "could not lease a host subnet (too many conflicts)",
                          network)

    def _free_subnet(self, network: str, candidates: builtins.list[str], leased: set[str],
                     node: str) -> str:
        """A free subnet, preferring ones no other node remembers as its own."""
        others = {e.value.get("subnet") for e in self.store.list(keys.node_prefix(network))
                  if not e.key.endswith("/" + node)}
        free = [s for s in candidates if s not in leased]
        if not free:
            raise PodnetError(POOL_EXHAUSTED, "no free host subnet left", network)
        fresh = [s for s in free if s not in others]
        pool = fresh or free
        return pool[0] if len(pool) < 4 else random.choice(pool[: max(4, len(pool) // 8)])

    def _remember(self, lease: HostLease) -> None:
        value = {"subnet": lease.subnet, "public_ip": lease.public_ip,
                 "pod_mtu": lease.pod_mtu, "backend": lease.backend}
        self.store.put(keys.node(lease.network, lease.node), value)

    def renew(self, lease: HostLease, ttl: float) -> HostLease:
        """Extend our lease; Conflict if it expired and somebody else holds the subnet."""
        key = keys.lease(lease.network, lease.subnet)
        current = self.store.get(key)
        if current is not None and current.value.get("node") != lease.node:
            raise Conflict(key)
        lease.revision = self.store.put(key, _lease_value(lease),
                                        revision=current.revision if current else 0, ttl=ttl)
        return lease

    def release(self, lease: HostLease) -> None:
        key = keys.lease(lease.network, lease.subnet)
        current = self.store.get(key)
        if current is not None and current.value.get("node") == lease.node:
            self.store.delete(key)

    def forget(self, network: str) -> None:
        for prefix in (keys.lease_prefix(network), keys.node_prefix(network)):
            for entry in self.store.list(prefix):
                self.store.delete(entry.key)
