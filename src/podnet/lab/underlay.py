"""The lab's underlay, built in its own namespaces: switches, a router, host uplinks.

Why a bridge in a switch namespace (and not veth pairs between hosts): one L2 segment
per switch is what a rack looks like to flannel's backends (host-gw needs peers
on-link, vxlan only needs IP reachability), and the root namespace is never touched.
Every host's uplink is a veth whose switch end is named after the host (`h3` in LAB-sw)
and whose host end is `eth0`, so `podnet lab exec LAB sw -- bridge link` reads well.

Why static neighbour entries between hosts: the kernel's IPv4 neighbour table is one
table for the whole machine (gc_thresh3 = 1024 entries by default, counted over every
namespace), and a 30-host lab needs 870 host-to-host entries on its underlay alone, so
its overlay traffic failed with "neighbor table overflow". Permanent entries are not
counted against that limit, and the lab knows every host's MAC in advance (see
topo.host_mac), so hosts on one segment know each other statically, like a fabric with
static ARP. The lab never touches the machine-wide sysctl.
"""

from __future__ import annotations

import os

from podnet.kernel import addr, links, neigh, netns, sysctl
from podnet.lab import topo

BRIDGE = "br0"
UPLINK = "eth0"


def make_ns(name: str) -> str:
    """A fresh namespace with its loopback up (tools inside expect 127.0.0.1)."""
    path = netns.create(name)
    with netns.iproute(name) as ipr:
        lo = links.lookup(ipr, "lo")
        if lo is not None:
            links.set_up(ipr, lo)
    return path


def forwarding_on(name: str) -> None:
    netns.run_in(name, lambda: sysctl.ensure("net.ipv4.ip_forward", "1"))


def build_switch(ns: str, *, address: str | None = None, gateway: str | None = None) -> None:
    """A switch namespace with bridge br0; an address only where a service (etcd) runs."""
    make_ns(ns)
    with netns.iproute(ns) as ipr:
        br = links.ensure_bridge(ipr, BRIDGE)
        if address:
            addr.ensure_address(ipr, br, address)
        if gateway:
            addr.replace_route(ipr, "default", gateway=gateway)


def plug(switch_ns: str, port: str, peer_ns: str, peer_ifname: str,
         mac: str | None = None) -> None:
    """A veth from the switch's bridge (end `port`) into peer_ns (end `peer_ifname`)."""
    fd = netns.open_netns(peer_ns)
    try:
        with netns.iproute(switch_ns) as ipr:
            br = links.lookup(ipr, BRIDGE)
            assert br is not None, f"{switch_ns} has no {BRIDGE}"
            index = links.create_veth_into(ipr, port, peer_ifname, fd, mtu=None)
            links.attach_to_bridge(ipr, index, br, hairpin=False)
    finally:
        os.close(fd)
    with netns.iproute(peer_ns) as ipr:
        index = links.lookup(ipr, peer_ifname)
        assert index is not None
        if mac:
            links.set_mac(ipr, index, mac)
        links.set_up(ipr, index)


def configure_uplink(ns: str, ifname: str, cidr: str, gateway: str | None = None) -> None:
    with netns.iproute(ns) as ipr:
        index = links.lookup(ipr, ifname)
        assert index is not None, f"{ns} has no {ifname}"
        addr.ensure_address(ipr, index, cidr)
        if gateway:
            addr.replace_route(ipr, "default", gateway=gateway)


def build_router(router_ns: str, switch_nss: list[str]) -> None:
    """The router between segments: leg `swS` on switch S with address 172.30.S.1."""
    make_ns(router_ns)
    for seg, sw in enumerate(switch_nss, start=1):
        leg = f"sw{seg}"
        plug(sw, "rt", router_ns, leg)
        configure_uplink(router_ns, leg, f"{topo.router_ip(seg)}/{topo.UNDERLAY_PREFIX}")
    forwarding_on(router_ns)


def build_host(host_ns: str, switch_ns: str, port: str, ip: str, mac: str, *,
               gateway: str | None) -> None:
    """A host namespace on a switch: eth0 with its underlay address, forwarding on."""
    make_ns(host_ns)
    plug(switch_ns, port, host_ns, UPLINK, mac)
    configure_uplink(host_ns, UPLINK, f"{ip}/{topo.UNDERLAY_PREFIX}", gateway)
    forwarding_on(host_ns)


def set_neighbours(ns: str, entries: list[tuple[str, str]]) -> None:
    """Permanent neighbour entries (ip, mac) on the host's uplink; replace is idempotent."""
    if not entries:
        return
    with netns.iproute(ns) as ipr:
        index = links.lookup(ipr, UPLINK)
        assert index is not None, f"{ns} has no {UPLINK}"
        for ip, mac in entries:
            neigh.replace(ipr, index, ip, mac)


def remove_neighbours(ns: str, ips: list[str]) -> None:
    """Drop neighbour entries on the uplink; tolerates absent entries and namespaces."""
    if not netns.exists(ns):
        return
    with netns.iproute(ns) as ipr:
        index = links.lookup(ipr, UPLINK)
        if index is None:
            return
        for ip in ips:
            neigh.remove(ipr, index, ip)
