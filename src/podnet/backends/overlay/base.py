"""The overlay backend interface, in flannel's shape.

A backend registers an overlay network on this host (creating its devices) and returns a
`BackendNetwork`: the data its lease carries (VTEP MAC, port), the MTU its pods get,
and the operations the agent's keeper drives — set up after leasing, add and remove
peers, prune what no peer explains, tear down. It never plugs pods and never reads the
store: the keeper (agent/overlay.py) leases, watches and hands it leases and peers.

Every kernel write goes through `podnet.kernel` helpers on a netlink handle the keeper
opens once per batch of events.
"""

from __future__ import annotations

import abc
import ipaddress
from typing import Any, ClassVar

from podnet.backends.overlay.config import OVERHEAD, OverlayConfig
from podnet.kernel import addr
from podnet.kernel.netns import Netlink
from podnet.kernel.underlay import Underlay
from podnet.resources.base import HostLease


def pod_mtu(cfg: OverlayConfig, underlay_mtu: int) -> int:
    """The one place a pod's MTU on an overlay is decided: the configured MTU, else the
    underlay's minus the backend's encapsulation overhead. A network nested inside a VM
    on another overlay subtracts again by itself, because its underlay is the VM's NIC."""
    return cfg.mtu or underlay_mtu - OVERHEAD[cfg.backend]


def gateway_of(lease_subnet: str) -> str:
    """The host's own address in its leased subnet (the pod bridge's, flannel's cni0)."""
    return str(ipaddress.IPv4Network(lease_subnet).network_address + 1)


class BackendNetwork(abc.ABC):
    """One overlay network on this host (flannel's backend.Network)."""

    def __init__(self, cfg: OverlayConfig, underlay: Underlay,
                 lease_data: dict[str, Any]) -> None:
        self.cfg = cfg
        self.underlay = underlay
        self.lease_data = lease_data  # what this host's lease tells the peers

    @property
    def mtu(self) -> int:
        return pod_mtu(self.cfg, self.underlay.mtu)

    def setup(self, nl: Netlink, lease: HostLease) -> None:  # noqa: B027 - optional
        """After leasing (and on every resync): this host's side of the lease."""

    @abc.abstractmethod
    def add_peer(self, nl: Netlink, lease: HostLease, peer: HostLease) -> None: ...

    @abc.abstractmethod
    def remove_peer(self, nl: Netlink, peer: HostLease) -> None: ...

    def prune(self, nl: Netlink, lease: HostLease, peers: list[HostLease]) -> None:
        """Remove routes into the cluster CIDR that no current peer explains."""
        wanted = {p.subnet for p in peers} | {lease.subnet}
        for cidr in addr.route_destinations(nl, prefixlen=self.cfg.subnet_len):
            if ipaddress.IPv4Network(cidr).subnet_of(self.cfg.cidr) and cidr not in wanted:
                addr.remove_route(nl, cidr)

    def teardown(self, nl: Netlink) -> None:  # noqa: B027 - optional
        """Remove this network's backend devices from the host."""


class OverlayBackend(abc.ABC):
    """A backend type (vxlan, host-gw, udp), registered by name in backends/overlay."""

    name: ClassVar[str]

    def __init__(self, *, node: str, run_dir: str) -> None:
        self.node = node
        self.run_dir = run_dir  # where helper processes keep sockets and pid files

    @abc.abstractmethod
    def register(self, nl: Netlink, cfg: OverlayConfig, underlay: Underlay,
                 memory: HostLease | None) -> BackendNetwork:
        """Create the network's devices on this host (before leasing: the lease carries
        what they are, e.g. the VTEP MAC); `memory` is the node's last lease, if any."""
