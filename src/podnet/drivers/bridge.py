"""The bridge driver: one Linux bridge per network on this host, a veth per pod.

The bridge holds the network's gateway address, so pods route through the host;
optional masquerade (nftables) lets pods reach beyond their subnet.
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute

from podnet.drivers import veth
from podnet.drivers.base import Driver, PodAddressing
from podnet.kernel import addr, links, netns, nft, sysctl
from podnet.model import Endpoint, Network


class BridgeDriver(Driver):
    name = "bridge"

    def addressing(self, net: Network) -> PodAddressing:
        routes = [{"dst": "0.0.0.0/0", "gw": net.gateway}] if net.gateway else []
        return PodAddressing(subnet=net.subnet, gateway=net.gateway, mtu=net.mtu, routes=routes)

    def bridge_name(self, net: Network) -> str:
        return net.bridge or ""

    def ensure_host_side(self, host: IPRoute, net: Network, pa: PodAddressing) -> int:
        """The bridge with the gateway address, forwarding on, masquerade if asked."""
        return self._ensure_host_side(host, net, pa)[0]

    def _ensure_host_side(self, host: IPRoute, net: Network, pa: PodAddressing
                          ) -> tuple[int, bool]:
        br, created = links.ensure_bridge_created(host, self.bridge_name(net), mtu=pa.mtu)
        if pa.gateway and pa.subnet:
            plen = ipaddress.IPv4Network(pa.subnet).prefixlen
            gateway = f"{pa.gateway}/{plen}"
            done = self.ctx.state.setdefault("gateways", set())
            if (br, gateway) not in done:  # a recreated bridge gets a new index
                addr.ensure_address(host, br, gateway)
                sysctl.ensure("net.ipv4.ip_forward", "1")
                done.add((br, gateway))
        if net.ip_masq and pa.subnet:
            done = self.ctx.state.setdefault("masq", set())
            if (net.name, pa.subnet) not in done:
                nft.ensure_masquerade(net.name, pa.subnet)
                done.add((net.name, pa.subnet))
        return br, created

    def attach(self, net: Network, ep: Endpoint) -> Endpoint:
        pa = self.addressing(net)
        with netns.iproute() as host:
            br, created = self._ensure_host_side(host, net, pa)
            try:
                return veth.plug(
                    host, ep, bridge_index=br, mtu=pa.mtu, hairpin=net.hairpin, routes=pa.routes
                )
            except BaseException:
                if created and not links.ports_of(host, br):
                    links.remove(host, self.bridge_name(net))
                raise

    def detach(self, net: Network, ep: Endpoint) -> None:
        with netns.iproute() as host:
            veth.unplug(host, ep)

    def check(self, net: Network, ep: Endpoint) -> None:
        pa = self.addressing(net)
        with netns.iproute() as host:
            br = links.lookup(host, self.bridge_name(net))
            veth.verify(host, ep, bridge_index=br, routes=pa.routes)

    def teardown(self, net: Network) -> None:
        with netns.iproute() as host:
            links.remove(host, self.bridge_name(net))
        nft.remove_masquerade(net.name)
        self.ctx.state.get("masq", set()).discard((net.name, net.subnet))
