"""host-gw: a plain route to each peer's subnet via the peer's public IP.

Only works when every peer is on the same L2 segment (the next hop must be on-link);
a peer behind a router is refused with a clear error instead of a route that
blackholes traffic.
"""

from __future__ import annotations

from podnet.backends.overlay.base import BackendNetwork, OverlayBackend
from podnet.backends.overlay.config import OverlayConfig
from podnet.errors import INVALID_CONFIG, PodnetError
from podnet.kernel import addr
from podnet.kernel.netns import Netlink
from podnet.kernel.underlay import Underlay
from podnet.resources.base import HostLease


def route_via_underlay(nl: Netlink, peer: HostLease, under: Underlay) -> None:
    if not under.on_link(peer.public_ip):
        raise PodnetError(
            INVALID_CONFIG,
            f"host-gw: peer {peer.node} ({peer.public_ip}) is not on-link from "
            f"{under.address}/{under.prefixlen}",
            "host-gw needs all hosts on one L2 segment; use vxlan (with DirectRouting)",
        )
    addr.replace_route(nl, peer.subnet, gateway=peer.public_ip, oif=under.index)


class HostGwNetwork(BackendNetwork):
    def add_peer(self, nl: Netlink, lease: HostLease, peer: HostLease) -> None:
        route_via_underlay(nl, peer, self.underlay)

    def remove_peer(self, nl: Netlink, peer: HostLease) -> None:
        addr.remove_route(nl, peer.subnet)


class HostGwBackend(OverlayBackend):
    name = "host-gw"

    def register(self, nl: Netlink, cfg: OverlayConfig, underlay: Underlay,
                 memory: HostLease | None) -> BackendNetwork:
        return HostGwNetwork(cfg, underlay, {"type": "host-gw"})
