"""The null driver: a sandbox with loopback only (libnetwork's `null`)."""

from __future__ import annotations

from podnet.drivers.base import Driver, PodAddressing
from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel import links, netns
from podnet.model import Endpoint, Network


class NullDriver(Driver):
    name = "null"

    def addressing(self, net: Network) -> PodAddressing:
        return PodAddressing(subnet=None, gateway=None, mtu=None)

    def attach(self, net: Network, ep: Endpoint) -> Endpoint:
        with netns.iproute(ep.netns) as pod:
            lo = links.lookup(pod, "lo")
            if lo is not None:
                links.set_up(pod, lo)
        return ep

    def detach(self, net: Network, ep: Endpoint) -> None:
        return None

    def check(self, net: Network, ep: Endpoint) -> None:
        with netns.iproute(ep.netns) as pod:
            lo = links.lookup(pod, "lo")
            link = links.get(pod, lo) if lo is not None else None
            if link is None or not link["flags"] & 1:
                raise PodnetError(KERNEL_FAILURE, "loopback is not up in the sandbox")
