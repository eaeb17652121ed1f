"""Where a port on this host takes its address from: the one place Addressing is made.

  null      no address
  bridge    the network's own subnet and gateway, its MTU (None: the kernel's default)
  overlays  this host's leased subnet, gateway = its first address, and the pod MTU the
            backend computed (backends/overlay/base.py pod_mtu), from the agent's keeper
            (which leases on first use) or, served without an agent, from the lease the
            agent recorded in the store
"""

from __future__ import annotations

from typing import Protocol

from podnet.backends.overlay import BACKENDS
from podnet.backends.overlay.base import gateway_of
from podnet.errors import TRY_AGAIN_LATER, PodnetError
from podnet.model import Addressing, Network
from podnet.resources import HostLease, Resources

NO_ADDRESS = Addressing(subnet=None, gateway=None, mtu=None)


class LeaseSource(Protocol):
    def lease_for(self, net: Network) -> HostLease | None:
        """This host's lease of an overlay network (None: not leased yet)."""


class StoredLeases:
    """Leases as the agent recorded them (for CNI calls served without an agent)."""

    def __init__(self, resources: Resources, node: str) -> None:
        self.resources = resources
        self.node = node

    def lease_for(self, net: Network) -> HostLease | None:
        return self.resources.leases.remembered(net.name, self.node)


class Addressings:
    def __init__(self, resources: Resources, node: str, leases: LeaseSource) -> None:
        self.resources = resources
        self.node = node
        self.leases = leases
        self._subnet_ids: dict[tuple[str, str], str] = {}

    def for_network(self, net: Network) -> Addressing:
        if net.driver == "null":
            return NO_ADDRESS
        if net.driver in BACKENDS:
            return self._overlay(net)
        if not net.subnet or not net.gateway:
            return Addressing(subnet=None, gateway=None, mtu=net.mtu)
        return Addressing.via_gateway(net.subnet, net.gateway, net.mtu,
                                      self._subnet_id(net))

    def _overlay(self, net: Network) -> Addressing:
        lease = self.leases.lease_for(net)
        if lease is None or not lease.subnet:
            raise PodnetError(
                TRY_AGAIN_LATER, f"no host subnet leased for node {self.node!r} yet",
                f"network {net.name}: is the podnet agent running on this host?")
        return Addressing.via_gateway(lease.subnet, gateway_of(lease.subnet), lease.pod_mtu)

    def _subnet_id(self, net: Network) -> str:
        """The id of a bridge network's subnet record (cached: ids never change, and a
        re-created network has a new network id)."""
        key = (net.id, net.subnet or "")
        if key not in self._subnet_ids:
            try:
                self._subnet_ids[key] = self.resources.get_subnet(net.subnet or "").id
            except PodnetError:
                return ""
        return self._subnet_ids[key]
