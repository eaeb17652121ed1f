"""host-gw: a plain route to each peer's subnet via the peer's public IP.

Only works when every peer is on the same L2 segment (the next hop must be on-link);
a peer behind a router is refused with a clear error instead of a route that
blackholes traffic.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from podnet.drivers.overlay import OverlayDriver
from podnet.errors import INVALID_CONFIG, PodnetError
from podnet.kernel import addr
from podnet.kernel.underlay import Underlay
from podnet.overlay.config import OverlayConfig
from podnet.overlay.leases import Lease


def route_via_underlay(ipr: IPRoute, peer: Lease, under: Underlay) -> None:
    if not under.on_link(peer.public_ip):
        raise PodnetError(
            INVALID_CONFIG,
            f"host-gw: peer {peer.node} ({peer.public_ip}) is not on-link from "
            f"{under.address}/{under.prefixlen}",
            "host-gw needs all hosts on one L2 segment; use vxlan (with DirectRouting)",
        )
    addr.replace_route(ipr, peer.subnet, gateway=peer.public_ip, oif=under.index)


class HostGwDriver(OverlayDriver):
    name = "host-gw"

    def add_peer(self, ipr: IPRoute, cfg: OverlayConfig, lease: Lease, peer: Lease,
                 under: Underlay) -> None:
        route_via_underlay(ipr, peer, under)

    def remove_peer(self, ipr: IPRoute, cfg: OverlayConfig, peer: Lease,
                    under: Underlay) -> None:
        addr.remove_route(ipr, peer.subnet)
