"""vxlan: kernel VXLAN between hosts, programmed per peer without learning.

Why no learning and no miss callbacks (flannel's design): every peer is known from the
store, so the agent installs a permanent neighbour entry (peer VTEP IP = the peer
subnet's network address -> VTEP MAC), an FDB entry (VTEP MAC -> peer public IP) and
then an onlink route to the peer subnet via that VTEP IP, in that order. Removal goes
in reverse, best-effort. With DirectRouting, peers on the same L2 segment get a plain
host-gw route instead, and only the others go through VXLAN.

Pitfalls handled: the VTEP MAC is fixed (remembered in the store) so a restarted agent
does not invalidate its peers' entries; the device MTU is the underlay MTU minus 50;
the outer UDP checksum is switched off explicitly (newer kernels default to on), as
flannel does, which avoids the broken checksum offload paths its users hit on some NICs
and costs nothing measurable here (the inner TCP checksum still protects the payload).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pyroute2 import IPRoute

from podnet.drivers.hostgw import route_via_underlay
from podnet.drivers.overlay import OverlayDriver
from podnet.kernel import addr, links, vxlan
from podnet.kernel.underlay import Underlay
from podnet.model import Network
from podnet.overlay.config import OVERHEAD, OverlayConfig
from podnet.overlay.leases import Lease


def device_name(cfg: OverlayConfig) -> str:
    return f"pnvx{cfg.vni}"


def vtep_ip(subnet: str) -> str:
    return str(ipaddress.IPv4Network(subnet).network_address)


class VxlanDriver(OverlayDriver):
    name = "vxlan"

    def prepare_host(
        self, ipr: IPRoute, cfg: OverlayConfig, under: Underlay, memory: dict[str, Any]
    ) -> dict[str, Any]:
        index = vxlan.ensure_vxlan(
            ipr, device_name(cfg), vni=cfg.vni, port=cfg.port, local=under.address,
            underlay_index=under.index, mtu=under.mtu - OVERHEAD["vxlan"],
            mac=memory.get("vtep_mac"),
        )
        return {"type": "vxlan", "vtep_mac": links.mac_of(ipr, index), "vni": cfg.vni,
                "port": cfg.port}

    def _index(self, ipr: IPRoute, cfg: OverlayConfig) -> int | None:
        return links.lookup(ipr, device_name(cfg))

    def setup_host(self, ipr: IPRoute, cfg: OverlayConfig, net: Network, lease: Lease,
                   under: Underlay) -> None:
        index = self._index(ipr, cfg)
        assert index is not None
        addr.ensure_address(ipr, index, f"{vtep_ip(lease.subnet)}/32")
        super().setup_host(ipr, cfg, net, lease, under)

    def add_peer(self, ipr: IPRoute, cfg: OverlayConfig, lease: Lease, peer: Lease,
                 under: Underlay) -> None:
        if cfg.direct_routing and under.on_link(peer.public_ip):
            route_via_underlay(ipr, peer, under)
            return
        index = self._index(ipr, cfg)
        mac = peer.backend.get("vtep_mac")
        if index is None or not mac:
            return
        vip = vtep_ip(peer.subnet)
        vxlan.replace_neighbour(ipr, index, vip, mac)
        vxlan.replace_fdb(ipr, index, mac, peer.public_ip)
        addr.replace_route(ipr, peer.subnet, gateway=vip, oif=index, onlink=True)

    def remove_peer(self, ipr: IPRoute, cfg: OverlayConfig, peer: Lease,
                    under: Underlay) -> None:
        addr.remove_route(ipr, peer.subnet)
        index = self._index(ipr, cfg)
        mac = peer.backend.get("vtep_mac")
        if index is None or not mac:
            return
        vxlan.remove_fdb(ipr, index, mac, peer.public_ip)
        vxlan.remove_neighbour(ipr, index, vtep_ip(peer.subnet))

    def prune(self, ipr: IPRoute, cfg: OverlayConfig, lease: Lease, peers: list[Lease],
              under: Underlay) -> None:
        super().prune(ipr, cfg, lease, peers, under)
        index = self._index(ipr, cfg)
        if index is None:
            return
        macs = {p.backend.get("vtep_mac") for p in peers}
        vteps = {vtep_ip(p.subnet) for p in peers}
        for entry in ipr.fdb("dump", ifindex=index):
            mac = entry.get("NDA_LLADDR")
            dst = entry.get("NDA_DST")
            if dst and mac and mac not in macs:
                vxlan.remove_fdb(ipr, index, mac, dst)
        for entry in ipr.get_neighbours(family=2, ifindex=index):
            dst = entry.get("NDA_DST")
            if dst and dst not in vteps:
                vxlan.remove_neighbour(ipr, index, dst)

    def teardown_host(self, ipr: IPRoute, cfg: OverlayConfig, net: Network) -> None:
        links.remove(ipr, device_name(cfg))
        super().teardown_host(ipr, cfg, net)
