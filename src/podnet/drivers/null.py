"""The null driver: a sandbox with loopback only (libnetwork's `null`)."""

from __future__ import annotations

from podnet.drivers.base import PodDriver
from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel import links, netns
from podnet.model import Addressing, Network, Port


class NullDriver(PodDriver):
    name = "null"

    def prepare(self, net: Network, port: Port, addressing: Addressing,
                sandbox: str | None) -> Port:
        return port

    def plug(self, net: Network, port: Port, addressing: Addressing, sandbox: str) -> Port:
        with netns.iproute(sandbox) as pod:
            links.set_up_by_name(pod, "lo")
        port.sandbox = sandbox
        return port

    def unplug(self, net: Network, port: Port) -> None:
        return None

    def check(self, net: Network, port: Port, addressing: Addressing) -> None:
        with netns.iproute(port.sandbox) as pod:
            lo = links.lookup(pod, "lo")
            link = links.get(pod, lo) if lo is not None else None
            if link is None or not links.is_up(link):
                raise PodnetError(KERNEL_FAILURE, "loopback is not up in the sandbox")
