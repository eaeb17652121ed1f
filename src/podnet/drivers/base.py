"""The pod driver interface: how a port is plugged into a sandbox on this host.

Like os-vif's plugins: a few methods, looked up by name, every failure a PodnetError.
A driver receives everything as typed arguments — the network, the port (address and
MAC already allocated by the resource layer), the addressing (subnet, gateway, MTU,
routes) computed by the agent — and never touches a store or the agent.

Attaching is two phases, because Docker splits them (CreateEndpoint, then Join, after
which Docker itself moves the interface into the container):
  prepare  the host side: per-network objects (bridge, gateway, NAT) and the port's own
           interface pair. Given the sandbox already (CNI), the pod end is created
           directly inside it; without one (Docker) it waits in this namespace under
           the name `waiting_name(port)`, for whoever moves it.
  plug     inside the sandbox: move the pod end in if it is not there yet, name it
           port.ifname, its address, up, routes.
prepare and plug each leave nothing behind when they fail; unplug succeeds on every
half state (nothing prepared, prepared but not plugged, plugged, sandbox gone).
"""

from __future__ import annotations

import abc
from typing import ClassVar

from podnet.kernel_names import waiting_veth_name
from podnet.model import Addressing, Network, Port


def waiting_name(port: Port) -> str:
    """The pod end's name while it waits in the host namespace (Docker's SrcName)."""
    return waiting_veth_name(port.device_id, port.ifname)


class PodDriver(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def prepare(self, net: Network, port: Port, addressing: Addressing,
                sandbox: str | None) -> Port:
        """Phase one: the host side; returns the port with host_ifname (and MAC) set."""

    @abc.abstractmethod
    def plug(self, net: Network, port: Port, addressing: Addressing, sandbox: str) -> Port:
        """Phase two: configure the port's interface inside `sandbox`."""

    @abc.abstractmethod
    def unplug(self, net: Network, port: Port) -> None:
        """Remove the port's interfaces; objects already gone are not an error."""

    @abc.abstractmethod
    def check(self, net: Network, port: Port, addressing: Addressing) -> None:
        """Raise PodnetError if the port is not plugged in as recorded."""

    def ensure_network(self, net: Network, addressing: Addressing) -> None:  # noqa: B027
        """The per-network host side on its own (the overlay keeper keeps it in place)."""

    def teardown(self, net: Network) -> None:  # noqa: B027 - optional
        """Remove per-network host objects (bridge, NAT rule) after the last port."""
