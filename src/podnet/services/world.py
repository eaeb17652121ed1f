"""What the service datapath needs from the store: the services, the addresses of the
ports each one selects, the cluster's service settings, and which changes matter.

Endpoints are the addresses of ports whose labels carry every key=value of a service's
selector (labels come from the CNI call's runtimeConfig or `podnet pod label`).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any

from podnet import keys
from podnet.errors import INVALID_CONFIG, PodnetError
from podnet.model import Port
from podnet.services.alloc import (
    DEFAULT_NODE_PORT_RANGE,
    DEFAULT_SERVICE_CIDR,
    PREFIX,
    ServiceAllocator,
)
from podnet.services.model import Service
from podnet.store import Store

WATCH_PREFIX = keys.ROOT + "/"
RELEVANT_PREFIXES = (keys.PORTS, PREFIX + "/specs/")


def select(selector: Mapping[str, str], ports: Iterable[Port]) -> list[str]:
    """Pod addresses whose labels carry every key=value of the selector."""
    if not selector:
        return []
    out = set()
    for port in ports:
        if port.ip and all(port.labels.get(k) == v for k, v in selector.items()):
            out.add(port.ip)
    return sorted(out)


def ports(store: Store) -> list[Port]:
    return [Port.from_dict(e.value) for e in store.list(keys.PORTS)]


def settings(store: Store) -> dict[str, Any]:
    entry = store.get(keys.SERVICES_CONFIG)
    if entry is None:
        return {"cidr": DEFAULT_SERVICE_CIDR, "node_port_range": list(DEFAULT_NODE_PORT_RANGE)}
    return dict(entry.value)


def allocator(store: Store) -> ServiceAllocator:
    cfg = settings(store)
    lo, hi = cfg["node_port_range"]
    return ServiceAllocator(store, cidr=cfg["cidr"], node_port_range=(lo, hi))


def configure(store: Store, *, cidr: str | None = None,
              node_port_range: str | None = None) -> dict[str, Any]:
    """Change the service CIDR and/or node port range ("LOW-HIGH"); validated first."""
    value = settings(store)
    if cidr:
        value["cidr"] = cidr
    if node_port_range:
        lo, _, hi = node_port_range.partition("-")
        try:
            value["node_port_range"] = [int(lo), int(hi)]
        except ValueError as exc:
            raise PodnetError(INVALID_CONFIG, "invalid --node-port-range",
                              node_port_range) from exc
    ServiceAllocator(store, cidr=value["cidr"],
                     node_port_range=tuple(value["node_port_range"]))  # validates
    store.put(keys.SERVICES_CONFIG, value)
    return value


def snapshot(store: Store) -> tuple[dict[str, Service], dict[str, list[str]]]:
    """Every service, and the endpoint addresses each one selects."""
    services = {s.name: s for s in allocator(store).list()}
    all_ports = ports(store)
    return services, {n: select(s.selector, all_ports) for n, s in services.items()}


def relevant(event_keys: Iterable[str]) -> bool:
    return any(k.startswith(RELEVANT_PREFIXES) for k in event_keys)


class StoreServices:
    """Services as the resource layer offers them to front ends (the CLI)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, service: Service) -> Service:
        return allocator(self.store).create(service)

    def list(self) -> builtins.list[Service]:
        return allocator(self.store).list()

    def delete(self, name: str) -> bool:
        return allocator(self.store).delete(name)

    def endpoints(self) -> dict[str, builtins.list[str]]:
        """Each service's endpoint addresses, by name."""
        return snapshot(self.store)[1]

    def settings(self) -> dict[str, Any]:
        return settings(self.store)

    def configure(self, *, cidr: str | None = None,
                  node_port_range: str | None = None) -> dict[str, Any]:
        return configure(self.store, cidr=cidr, node_port_range=node_port_range)
