"""Cluster IPs and node ports, allocated in the store so that no two services ever share one.

Why create-if-absent keys: every allocated address and node port is its own key, written
with `put(..., revision=0)`. The store accepts exactly one writer per key (SQLite's write
lock, etcd's transaction), so allocators in several processes or on several hosts can race
freely: a loser gets Conflict and tries the next candidate. Candidates start at a random
offset so concurrent allocators rarely collide at all. Each creation carries a random uid
written into every key it claims, so a failed or losing creation releases exactly its own
claims, even when another creation of the same name raced it.

Key layout (values are JSON objects):
    /podnet/services/specs/<name>       the Service (to_dict) with its allocations, plus "uid"
    /podnet/services/ips/<a.b.c.d>      {"service": <name>, "uid": <uid>}
    /podnet/services/nodeports/<port>   {"service": <name>, "uid": <uid>} (a number, any protocol)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import uuid
from collections.abc import Iterator

from podnet import keys
from podnet.errors import IN_USE, INVALID_CONFIG, POOL_EXHAUSTED, Conflict, PodnetError
from podnet.services.model import NODE_PORT, Service
from podnet.store.base import Store

DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_NODE_PORT_RANGE = (30000, 32767)
PREFIX = keys.SERVICES


class ServiceAllocator:
    """Allocates and releases service names, cluster IPs and node ports in a store."""

    def __init__(
        self,
        store: Store,
        *,
        cidr: str = DEFAULT_SERVICE_CIDR,
        node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
        prefix: str = PREFIX,
    ) -> None:
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise PodnetError(INVALID_CONFIG, "invalid service CIDR", f"{cidr}: {exc}") from exc
        if net.version != 4:
            raise PodnetError(INVALID_CONFIG, "only IPv4 service CIDRs are supported", cidr)
        lo, hi = node_port_range
        if not (1 <= lo <= hi <= 65535):
            raise PodnetError(
                INVALID_CONFIG, "invalid node port range", f"{lo}-{hi}: need 1 <= low <= high"
            )
        self.store = store
        self.network: ipaddress.IPv4Network = net  # type: ignore[assignment]
        self.node_ports = (lo, hi)
        self.prefix = prefix.rstrip("/")

    # -- keys -------------------------------------------------------------------------------
    def spec_key(self, name: str) -> str:
        return f"{self.prefix}/specs/{name}"

    def ip_key(self, ip: str) -> str:
        return f"{self.prefix}/ips/{ip}"

    def node_port_key(self, port: int) -> str:
        return f"{self.prefix}/nodeports/{port}"

    # -- services ---------------------------------------------------------------------------
    def create(self, service: Service) -> Service:
        """Claim the name, a cluster IP and node ports; store and return the filled service.

        All or nothing: on any failure every claim made here is released again.
        """
        name = service.name
        if self.store.get(self.spec_key(name)) is not None:
            raise PodnetError(IN_USE, "service name already in use", name)
        uid = uuid.uuid4().hex
        claimed: list[str] = []
        try:
            ip = self._allocate_ip(name, uid, service.cluster_ip)
            claimed.append(self.ip_key(ip))
            ports = []
            for p in service.ports:
                if service.type == NODE_PORT:
                    np = self._allocate_node_port(name, uid, p.node_port)
                    claimed.append(self.node_port_key(np))
                    p = dataclasses.replace(p, node_port=np)
                ports.append(p)
            filled = dataclasses.replace(service, cluster_ip=ip, ports=tuple(ports))
            try:
                self.store.put(self.spec_key(name), {**filled.to_dict(), "uid": uid}, revision=0)
            except Conflict as exc:
                raise PodnetError(IN_USE, "service name already in use", name) from exc
            return filled
        except BaseException:
            for key in reversed(claimed):
                self._release(key, uid)
            raise

    def delete(self, name: str) -> bool:
        """Release a service's name, cluster IP and node ports; False if it did not exist."""
        entry = self.store.get(self.spec_key(name))
        if entry is None:
            return False
        uid = entry.value.get("uid")
        svc = _service(entry.value)
        for p in svc.ports:
            if p.node_port is not None:
                self._release(self.node_port_key(p.node_port), uid)
        if svc.cluster_ip:
            self._release(self.ip_key(svc.cluster_ip), uid)
        try:
            self.store.delete(self.spec_key(name), revision=entry.revision)
        except Conflict:
            return False
        return True

    def get(self, name: str) -> Service | None:
        entry = self.store.get(self.spec_key(name))
        return _service(entry.value) if entry else None

    def list(self) -> list[Service]:
        return [_service(e.value) for e in self.store.list(self.spec_key(""))]

    # -- cluster IPs ------------------------------------------------------------------------
    def _usable_ips(self) -> tuple[int, int]:
        """First and last usable address as ints (no network/broadcast address below /31)."""
        net = self.network
        first, last = int(net.network_address), int(net.broadcast_address)
        if net.prefixlen < 31:
            first, last = first + 1, last - 1
        return first, last

    def _allocate_ip(self, owner: str, uid: str, requested: str | None) -> str:
        first, last = self._usable_ips()
        if requested is not None:
            try:
                addr = ipaddress.IPv4Address(requested)
            except ValueError as exc:
                raise PodnetError(INVALID_CONFIG, "invalid cluster IP", requested) from exc
            if not first <= int(addr) <= last:
                raise PodnetError(
                    INVALID_CONFIG,
                    "cluster IP is outside the service CIDR",
                    f"{addr} is not a usable address of {self.network}",
                )
            self._claim(self.ip_key(str(addr)), owner, uid, f"cluster IP {addr}")
            return str(addr)
        used = {e.key.rsplit("/", 1)[1] for e in self.store.list(self.ip_key(""))}
        for value in _candidates(first, last):
            ip = str(ipaddress.IPv4Address(value))
            if ip not in used and self._try_claim(self.ip_key(ip), owner, uid):
                return ip
        raise PodnetError(
            POOL_EXHAUSTED,
            f"service CIDR {self.network} exhausted",
            f"all {last - first + 1} cluster IPs are in use",
        )

    # -- node ports -------------------------------------------------------------------------
    def _allocate_node_port(self, owner: str, uid: str, requested: int | None) -> int:
        lo, hi = self.node_ports
        if requested is not None:
            if not lo <= requested <= hi:
                raise PodnetError(
                    INVALID_CONFIG,
                    "node port is outside the node port range",
                    f"{requested} is not in {lo}-{hi}",
                )
            self._claim(self.node_port_key(requested), owner, uid, f"node port {requested}")
            return requested
        used = {e.key.rsplit("/", 1)[1] for e in self.store.list(f"{self.prefix}/nodeports/")}
        for port in _candidates(lo, hi):
            if str(port) not in used and self._try_claim(self.node_port_key(port), owner, uid):
                return port
        raise PodnetError(
            POOL_EXHAUSTED,
            f"node port range {lo}-{hi} exhausted",
            f"all {hi - lo + 1} node ports are in use",
        )

    def _try_claim(self, key: str, owner: str, uid: str) -> bool:
        try:
            self.store.put(key, {"service": owner, "uid": uid}, revision=0)
        except Conflict:
            return False
        return True

    def _claim(self, key: str, owner: str, uid: str, what: str) -> None:
        if not self._try_claim(key, owner, uid):
            entry = self.store.get(key)
            holder = entry.value.get("service") if entry else "?"
            raise PodnetError(IN_USE, f"{what} already in use", f"by service {holder}")

    def _release(self, key: str, uid: str | None, owner: str | None = None) -> bool:
        """Delete `key` if it still belongs to `uid` / `owner` (None: any); revision-checked."""
        entry = self.store.get(key)
        if entry is None:
            return False
        if uid is not None and entry.value.get("uid") != uid:
            return False
        if owner is not None and entry.value.get("service") != owner:
            return False
        try:
            return self.store.delete(key, revision=entry.revision)
        except Conflict:
            return False


def _service(value: dict) -> Service:
    return Service.from_dict({k: v for k, v in value.items() if k != "uid"})


def _candidates(first: int, last: int) -> Iterator[int]:
    """Every value in [first, last] once, starting at a random offset."""
    size = last - first + 1
    start = random.randrange(size)
    for i in range(size):
        yield first + (start + i) % size
