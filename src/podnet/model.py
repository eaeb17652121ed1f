"""The Container Network Model's nouns as plain data, stored as JSON in the store.

Network: a named L2/L3 domain with a driver (null, bridge, vxlan, host-gw, udp).
Subnet: an address range of a network, with its gateway.
Endpoint: one interface of one sandbox on one network (a Neutron port).
Sandbox: a pod, i.e. one network namespace shared by all of its containers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Subnet(_Record):
    cidr: str
    gateway: str | None = None


@dataclass
class Network(_Record):
    name: str
    driver: str = "bridge"
    subnet: str | None = None
    gateway: str | None = None
    mtu: int | None = None
    ip_masq: bool = False
    bridge: str | None = None
    hairpin: bool = True
    # Overlay (flannel-shaped) settings; used by the vxlan / host-gw / udp drivers.
    subnet_len: int | None = None
    subnet_min: str | None = None
    subnet_max: str | None = None
    backend: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0


@dataclass
class Endpoint(_Record):
    network: str
    container_id: str
    ifname: str
    pod: str
    netns: str
    address: str | None = None  # CIDR notation, e.g. 10.1.2.5/24
    gateway: str | None = None
    mac: str | None = None
    host_ifname: str | None = None
    mtu: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0


@dataclass
class Sandbox(_Record):
    """A pod: one network namespace, any number of endpoints, shared by its containers."""

    name: str
    netns: str
    endpoints: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
