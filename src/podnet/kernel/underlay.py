"""Find the underlay interface: the one holding the host's public IP (or the default route's)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute

from podnet.errors import INVALID_CONFIG, PodnetError


@dataclass(frozen=True)
class Underlay:
    index: int
    name: str
    mtu: int
    address: str  # the public IP
    prefixlen: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.address}/{self.prefixlen}", strict=False)

    def on_link(self, ip: str) -> bool:
        return ipaddress.IPv4Address(ip) in self.network


def find(ipr: IPRoute, public_ip: str | None) -> Underlay:
    if public_ip is None:
        routes = ipr.get_default_routes(family=2)
        if not routes:
            raise PodnetError(INVALID_CONFIG, "no default route to guess the public IP from",
                              "pass --public-ip")
        oif = routes[0].get("RTA_OIF")
        addrs = ipr.get_addr(family=2, index=oif)
    else:
        addrs = [a for a in ipr.get_addr(family=2) if a.get("IFA_ADDRESS") == public_ip]
    if not addrs:
        raise PodnetError(INVALID_CONFIG, "public IP is not an address of this host",
                          str(public_ip))
    a = addrs[0]
    link = ipr.get_links(a["index"])[0]
    return Underlay(a["index"], link.get("IFLA_IFNAME"), link.get("IFLA_MTU"),
                    a.get("IFA_ADDRESS"), a["prefixlen"])
