"""The bridge driver: one Linux bridge per network on this host, a veth per pod.

The bridge holds the network's gateway address for this host (a bridge network's own
gateway, or an overlay's host subnet gateway: flannel's cni0), so pods route through
the host; optional masquerade (nftables) lets pods reach beyond their subnet. The
per-network host side is made once per network and remembered by this driver object.
"""

from __future__ import annotations

import ipaddress
import threading

from podnet.drivers import veth
from podnet.drivers.base import PodDriver
from podnet.kernel import addr, links, netns, nft, sysctl
from podnet.kernel.netns import Netlink
from podnet.model import Addressing, Network, Port


class BridgeDriver(PodDriver):
    name = "bridge"

    def __init__(self) -> None:
        self._gateways: set[tuple[int, str]] = set()  # (bridge index, gateway CIDR) ensured
        self._masq: set[tuple[str, str]] = set()  # (network, subnet) masqueraded
        self._lock = threading.Lock()

    def _host_side(self, host: Netlink, net: Network, addressing: Addressing
                   ) -> tuple[int, bool]:
        """The bridge with the gateway address, forwarding on, masquerade if asked."""
        br, created = links.ensure_bridge_created(host, net.bridge or "", mtu=addressing.mtu)
        if addressing.gateway and addressing.subnet:
            plen = ipaddress.IPv4Network(addressing.subnet).prefixlen
            gateway = f"{addressing.gateway}/{plen}"
            if (br, gateway) not in self._gateways:  # a recreated bridge gets a new index
                addr.ensure_address(host, br, gateway)
                sysctl.ensure("net.ipv4.ip_forward", "1")
                self._gateways.add((br, gateway))
        if net.ip_masq and addressing.subnet:
            with self._lock:
                if (net.name, addressing.subnet) not in self._masq:
                    nft.ensure_masquerade(net.name, addressing.subnet)
                    self._masq.add((net.name, addressing.subnet))
        return br, created

    def ensure_network(self, net: Network, addressing: Addressing) -> None:
        with netns.iproute() as host:
            self._host_side(host, net, addressing)

    def prepare(self, net: Network, port: Port, addressing: Addressing,
                sandbox: str | None) -> Port:
        with netns.iproute() as host:
            br, created = self._host_side(host, net, addressing)
            try:
                return veth.create(host, port, sandbox=sandbox, bridge_index=br,
                                   mtu=addressing.mtu, hairpin=net.hairpin)
            except BaseException:
                if created and not links.ports_of(host, br):
                    links.remove(host, net.bridge or "")
                raise

    def plug(self, net: Network, port: Port, addressing: Addressing, sandbox: str) -> Port:
        with netns.iproute() as host:
            return veth.configure_pod_side(host, port, sandbox, addressing.routes)

    def unplug(self, net: Network, port: Port) -> None:
        with netns.iproute() as host:
            veth.remove(host, port)

    def check(self, net: Network, port: Port, addressing: Addressing) -> None:
        with netns.iproute() as host:
            br = links.lookup(host, net.bridge or "")
            veth.verify(host, port, bridge_index=br, routes=addressing.routes)

    def teardown(self, net: Network) -> None:
        with netns.iproute() as host:
            links.remove(host, net.bridge or "")
        nft.remove_masquerade(net.name)
        self._masq = {m for m in self._masq if m[0] != net.name}
