"""The resource layer's protocol: networks, subnets, subnet pools, ports and host leases.

Every front end (CNI, Docker, the CLI) and the agent reach records only through this
protocol, never through the store's keys. Two implementations are meant to satisfy it:
`LocalResources` over podnet's own store (SQLite or etcd), and one backed by a real
Neutron server (Kuryr mode), where every call is a remote request of about 100 ms that
can fail. So callers never assume a local, instant store: they make few calls, hold no
lock across one, and treat `Unavailable` as "try again later".

Failures are three kinds (podnet.errors) that front ends map to their own answers:
  NotFound          the object does not exist            (CNI 105; Docker Err)
  ResourceConflict  it exists / is in use (code 104, or 101 for a duplicate attachment)
  Unavailable       the authority cannot be reached       (CNI 11)
plus PodnetError(INVALID_CONFIG) for invalid input and POOL_EXHAUSTED for a full pool.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from podnet.model import Addressing, Network, Port, Subnet, SubnetPool
from podnet.services.model import Service


@dataclass
class HostLease:
    """One host's lease of a subnet of an overlay network (flannel's lease)."""

    network: str
    node: str
    subnet: str
    public_ip: str
    pod_mtu: int | None = None
    backend: dict[str, Any] = field(default_factory=dict)  # backend data: vtep_mac, port..
    revision: int = 0


@dataclass(frozen=True)
class LeaseEvent:
    kind: str  # "put" | "delete"
    subnet: str
    lease: HostLease | None  # the new lease on "put"


class LeaseWatch(Protocol):
    def next_batch(self, timeout: float) -> list[LeaseEvent]: ...

    def close(self) -> None: ...


class HostLeases(Protocol):
    """flannel's subnet manager: host subnet leases of overlay networks."""

    def acquire(self, network: str, candidates: list[str], node: str, public_ip: str,
                pod_mtu: int | None, backend: dict[str, Any], ttl: float) -> HostLease: ...

    def renew(self, lease: HostLease, ttl: float) -> HostLease: ...

    def release(self, lease: HostLease) -> None: ...

    def list(self, network: str) -> builtins.list[HostLease]: ...

    def remembered(self, network: str, node: str) -> HostLease | None:
        """The lease this node held last (kept without TTL), or None."""

    def forget(self, network: str) -> None:
        """Drop every lease and node record of a removed network."""

    def watch(self, network: str, start_revision: int) -> LeaseWatch: ...


class ServiceRecords(Protocol):
    """Services (ClusterIP / NodePort) and the cluster's service settings."""

    def create(self, service: Service) -> Service: ...

    def list(self) -> builtins.list[Service]: ...

    def delete(self, name: str) -> bool: ...

    def endpoints(self) -> dict[str, builtins.list[str]]: ...

    def settings(self) -> dict[str, Any]: ...

    def configure(self, *, cidr: str | None = None,
                  node_port_range: str | None = None) -> dict[str, Any]: ...


class Resources(Protocol):
    @property
    def leases(self) -> HostLeases: ...

    @property
    def services(self) -> ServiceRecords: ...

    # -- networks -------------------------------------------------------------------
    def create_network(self, net: Network, *, exist_ok: bool = False,
                       pool: str | None = None) -> Network:
        """Store a validated network (its subnet carved from `pool` when not given);
        with exist_ok an identical definition is returned instead of a conflict."""

    def validate_network(self, net: Network) -> Network:
        """Check a definition and fill its defaults without storing it."""

    def get_network(self, name: str) -> Network: ...

    def find_network(self, name: str) -> Network | None: ...

    def list_networks(self) -> list[Network]: ...

    def delete_network(self, name: str) -> Network:
        """Remove a network without ports (ResourceConflict while it has some)."""

    # -- subnets and pools -------------------------------------------------------------
    def create_subnet(self, subnet: Subnet, *, pool: str | None = None,
                      prefixlen: int | None = None) -> Subnet: ...

    def get_subnet(self, id_or_cidr: str) -> Subnet: ...

    def list_subnets(self, network: str | None = None) -> list[Subnet]: ...

    def delete_subnet(self, id_or_cidr: str) -> Subnet: ...

    def create_subnet_pool(self, pool: SubnetPool) -> SubnetPool: ...

    def get_subnet_pool(self, name: str) -> SubnetPool: ...

    def list_subnet_pools(self) -> list[SubnetPool]: ...

    def delete_subnet_pool(self, name: str) -> SubnetPool: ...

    # -- ports ---------------------------------------------------------------------------
    def create_port(self, port: Port, addressing: Addressing) -> Port:
        """Claim (network, device_id, ifname) and allocate its fixed IPs from
        `addressing` (a fixed IP given with an ip_address is taken as asked).
        ResourceConflict(101) if that device already has that interface there."""

    def update_port(self, port: Port) -> Port: ...

    def find_port(self, network: str, device_id: str, ifname: str) -> Port | None: ...

    def get_port(self, port_id: str) -> Port: ...

    def list_ports(self, network: str | None = None) -> list[Port]: ...

    def delete_port(self, port: Port) -> None:
        """Remove the port and release its addresses; an absent port is not an error."""

    def release_addresses_of(self, network: str, device_id: str, ifname: str) -> list[str]:
        """Free addresses still held by (device, ifname) without a port record (leak
        repair after an attach that died between allocating and recording)."""

    def gc_addresses(self, network: str, valid: Iterable[tuple[str, str]]) -> list[str]:
        """Free addresses whose owner (device, ifname) is not valid and has no port."""

    def address_owners(self, network: str) -> dict[str, dict[str, Any]]: ...

    # -- the authority itself ---------------------------------------------------------------
    def revision(self) -> int:
        """A cheap round trip: raises Unavailable when the authority cannot be reached."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
