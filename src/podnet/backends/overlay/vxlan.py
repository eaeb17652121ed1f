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

from podnet.backends.overlay.base import BackendNetwork, OverlayBackend
from podnet.backends.overlay.config import OVERHEAD, OverlayConfig
from podnet.backends.overlay.hostgw import route_via_underlay
from podnet.kernel import addr, links, vxlan
from podnet.kernel.netns import Netlink
from podnet.kernel.underlay import Underlay
from podnet.resources.base import HostLease


def device_name(cfg: OverlayConfig) -> str:
    return f"pnvx{cfg.vni}"


def vtep_ip(subnet: str) -> str:
    return str(ipaddress.IPv4Network(subnet).network_address)


class VxlanNetwork(BackendNetwork):
    def _index(self, nl: Netlink) -> int | None:
        return links.lookup(nl, device_name(self.cfg))

    def setup(self, nl: Netlink, lease: HostLease) -> None:
        index = self._index(nl)
        if index is None:  # deleted behind our back: the resync re-creates it
            index = vxlan.ensure_vxlan(
                nl, device_name(self.cfg), vni=self.cfg.vni, port=self.cfg.port,
                local=self.underlay.address, underlay_index=self.underlay.index,
                mtu=self.underlay.mtu - OVERHEAD["vxlan"],
                mac=self.lease_data.get("vtep_mac"))
        addr.ensure_address(nl, index, f"{vtep_ip(lease.subnet)}/32")

    def add_peer(self, nl: Netlink, lease: HostLease, peer: HostLease) -> None:
        if self.cfg.direct_routing and self.underlay.on_link(peer.public_ip):
            route_via_underlay(nl, peer, self.underlay)
            return
        index = self._index(nl)
        mac = peer.backend.get("vtep_mac")
        if index is None or not mac:
            return
        vip = vtep_ip(peer.subnet)
        vxlan.replace_neighbour(nl, index, vip, mac)
        vxlan.replace_fdb(nl, index, mac, peer.public_ip)
        addr.replace_route(nl, peer.subnet, gateway=vip, oif=index, onlink=True)

    def remove_peer(self, nl: Netlink, peer: HostLease) -> None:
        addr.remove_route(nl, peer.subnet)
        index = self._index(nl)
        mac = peer.backend.get("vtep_mac")
        if index is None or not mac:
            return
        vxlan.remove_fdb(nl, index, mac, peer.public_ip)
        vxlan.remove_neighbour(nl, index, vtep_ip(peer.subnet))

    def prune(self, nl: Netlink, lease: HostLease, peers: list[HostLease]) -> None:
        super().prune(nl, lease, peers)
        index = self._index(nl)
        if index is None:
            return
        macs = {p.backend.get("vtep_mac") for p in peers}
        vteps = {vtep_ip(p.subnet) for p in peers}
        for mac, dst in vxlan.fdb_entries(nl, index):
            if mac not in macs:
                vxlan.remove_fdb(nl, index, mac, dst)
        for ip in vxlan.neighbours(nl, index):
            if ip not in vteps:
                vxlan.remove_neighbour(nl, index, ip)

    def teardown(self, nl: Netlink) -> None:
        links.remove(nl, device_name(self.cfg))


class VxlanBackend(OverlayBackend):
    name = "vxlan"

    def register(self, nl: Netlink, cfg: OverlayConfig, underlay: Underlay,
                 memory: HostLease | None) -> BackendNetwork:
        remembered_mac = memory.backend.get("vtep_mac") if memory else None
        index = vxlan.ensure_vxlan(
            nl, device_name(cfg), vni=cfg.vni, port=cfg.port, local=underlay.address,
            underlay_index=underlay.index, mtu=underlay.mtu - OVERHEAD["vxlan"],
            mac=remembered_mac)
        data = {"type": "vxlan", "vtep_mac": links.mac_of(nl, index), "vni": cfg.vni,
                "port": cfg.port}
        return VxlanNetwork(cfg, underlay, data)
