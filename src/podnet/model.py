"""podnet's nouns as plain records, stored as JSON; Neutron's field names where it has them.

Network: a named network with a driver. `bridge` and `null` live on one host; `vxlan`,
    `host-gw` and `udp` are flannel-shaped overlays whose `subnet` is the cluster CIDR,
    split into one leased host subnet per host.
Subnet: an address range of a network (Neutron's subnet). A bridge network has one; an
    overlay's cluster CIDR is recorded as a subnet of role "cluster" (never allocated
    from directly: pods take addresses from their host's leased subnet).
SubnetPool: prefixes that subnets are carved from when no CIDR is given.
Port: one interface of one sandbox on one network. A CNI attachment and a Docker
    endpoint are both ports; `frontend` says which made it.
Addressing: not stored. What a port on this host gets: the subnet it takes its address
    from, the gateway, the MTU and the routes. The agent computes it (agent/addressing.py)
    and hands it to the resource layer (to allocate) and to the pod driver (to plug).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    """A dataclass that round-trips through a JSON object, ignoring unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Network(Record):
    name: str
    driver: str = "bridge"
    subnet: str | None = None  # bridge: its subnet; overlays: the cluster CIDR
    gateway: str | None = None
    mtu: int | None = None
    ip_masq: bool = False
    bridge: str | None = None
    hairpin: bool = True
    # Overlay (flannel-shaped) settings; used by the vxlan / host-gw / udp backends.
    subnet_len: int | None = None
    subnet_min: str | None = None
    subnet_max: str | None = None
    backend: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    created: float = 0.0


SUBNET_ROLE_PORTS = "ports"  # ports take addresses from it
SUBNET_ROLE_CLUSTER = "cluster"  # an overlay's cluster CIDR, split into host leases


@dataclass
class Subnet(Record):
    id: str
    network: str
    cidr: str
    gateway_ip: str | None = None
    allocation_pools: list[dict[str, str]] = field(default_factory=list)  # {"start", "end"}
    host_routes: list[dict[str, str]] = field(default_factory=list)  # {"destination", "nexthop"}
    dns_nameservers: list[str] = field(default_factory=list)
    subnetpool_id: str | None = None
    role: str = SUBNET_ROLE_PORTS
    created: float = 0.0


@dataclass
class SubnetPool(Record):
    name: str
    prefixes: list[str]
    default_prefixlen: int = 24
    min_prefixlen: int = 8
    max_prefixlen: int = 30
    id: str = ""
    created: float = 0.0


@dataclass
class FixedIP(Record):
    ip_address: str
    cidr: str  # the subnet's CIDR: gives the prefix length on the interface
    subnet_id: str = ""  # "" for an address of an overlay host subnet


PORT_DOWN = "DOWN"  # created: address allocated, host side prepared
PORT_ACTIVE = "ACTIVE"  # plugged into its sandbox


@dataclass
class Port(Record):
    id: str
    network: str
    device_id: str  # the container (CNI) or endpoint (Docker) id
    ifname: str  # the interface's name in the sandbox
    device_owner: str = ""
    frontend: str = "cni"  # "cni" | "docker"
    host: str = ""  # the binding host
    sandbox: str = ""  # network namespace path ("" until plugged, for Docker)
    pod: str = ""
    fixed_ips: list[FixedIP] = field(default_factory=list)
    mac_address: str | None = None
    gateway: str | None = None
    mtu: int | None = None
    host_ifname: str | None = None
    allowed_address_pairs: list[dict[str, str]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    status: str = PORT_DOWN
    created: float = 0.0

    @property
    def address(self) -> str | None:
        """The first fixed IP as CIDR (a.b.c.d/len), as a pod's interface carries it."""
        if not self.fixed_ips:
            return None
        ip = self.fixed_ips[0]
        return f"{ip.ip_address}/{ip.cidr.rsplit('/', 1)[1]}"

    @property
    def ip(self) -> str | None:
        return self.fixed_ips[0].ip_address if self.fixed_ips else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Port:
        port = super().from_dict(data)
        port.fixed_ips = [ip if isinstance(ip, FixedIP) else FixedIP.from_dict(ip)
                          for ip in port.fixed_ips]
        return port


@dataclass(frozen=True)
class Route:
    dst: str  # CIDR, 0.0.0.0/0 for the default route
    gw: str | None = None

    def to_cni(self) -> dict[str, str]:
        return {"dst": self.dst, "gw": self.gw} if self.gw else {"dst": self.dst}


@dataclass(frozen=True)
class Addressing:
    """Where a port on this host takes its address from, and how its pod routes."""

    subnet: str | None  # CIDR to allocate from (None: no address, e.g. the null driver)
    gateway: str | None
    mtu: int | None
    routes: tuple[Route, ...] = ()
    subnet_id: str = ""

    @staticmethod
    def via_gateway(subnet: str, gateway: str, mtu: int | None, subnet_id: str = ""
                    ) -> Addressing:
        return Addressing(subnet, gateway, mtu, (Route("0.0.0.0/0", gateway),), subnet_id)
