"""The driver interface: what every network type must do to plug a pod in.

Like os-vif's plugins: a few methods, looked up by name, every failure a PodnetError.
attach() must leave nothing behind when it fails; detach() must succeed when the
objects are already gone.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from podnet.model import Endpoint, Network
from podnet.store import Store


@dataclass
class DriverContext:
    """What drivers may use besides the kernel: the store and who we are."""

    store: Store
    node: str
    run_dir: str = "/run/podnet"  # where helper processes keep sockets and pid files
    state: dict = field(default_factory=dict)  # per-process caches (e.g. ensured bridges)


@dataclass
class PodAddressing:
    """Where a pod on this host takes its address from, and its gateway."""

    subnet: str | None
    gateway: str | None
    mtu: int | None
    routes: list[dict] = field(default_factory=list)  # CNI-shaped {"dst", "gw"?}


class Driver(abc.ABC):
    name = "base"

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def addressing(self, net: Network) -> PodAddressing:
        """The subnet, gateway, MTU and routes for pods of `net` on this host."""

    @abc.abstractmethod
    def attach(self, net: Network, ep: Endpoint) -> Endpoint:
        """Plug `ep` (address already allocated) into its sandbox; returns it completed."""

    @abc.abstractmethod
    def detach(self, net: Network, ep: Endpoint) -> None:
        """Unplug; objects already gone are not an error."""

    @abc.abstractmethod
    def check(self, net: Network, ep: Endpoint) -> None:
        """Raise PodnetError if the endpoint is not plugged in as recorded."""

    def teardown(self, net: Network) -> None:  # noqa: B027 - optional
        """Remove per-network host objects (bridge, NAT rule) after the last endpoint."""
