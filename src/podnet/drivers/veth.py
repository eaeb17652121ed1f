"""Plugging a pod into a host-side parent with a veth pair: shared by every driver
that gives pods a veth (bridge, and the overlay backends that bridge pods per host)."""

from __future__ import annotations

import contextlib
import ipaddress
import os

from pyroute2 import IPRoute

from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel import addr, links, netns
from podnet.kernel_names import host_veth_name
from podnet.model import Endpoint


def plug(
    host: IPRoute,
    ep: Endpoint,
    *,
    bridge_index: int | None,
    mtu: int | None,
    hairpin: bool,
    routes: list[dict],
) -> Endpoint:
    """Create the veth, attach its host end, configure the pod end. Rolls back on error."""
    host_if = host_veth_name(ep.container_id, ep.ifname)
    fd = netns.open_netns(ep.netns)
    with contextlib.ExitStack() as undo:
        undo.callback(os.close, fd)
        rollback = contextlib.ExitStack()
        undo.enter_context(rollback)
        index = links.create_veth_into(host, host_if, ep.ifname, fd, mtu=mtu,
                                       master=bridge_index)
        rollback.callback(links.remove, host, host_if)
        if bridge_index is not None and hairpin:
            links.set_hairpin(host, index)
        with netns.iproute(ep.netns) as pod:
            ep.mac = configure_pod_side(pod, ep, routes)
        ep.host_ifname = host_if
        ep.mtu = mtu
        rollback.pop_all()
    return ep


def configure_pod_side(pod: IPRoute, ep: Endpoint, routes: list[dict]) -> str | None:
    links.set_up_by_name(pod, "lo")
    link = links.get_by_name(pod, ep.ifname)
    if link is None:
        raise PodnetError(KERNEL_FAILURE, f"{ep.ifname} missing in the sandbox after creation")
    index = link["index"]
    if ep.address:
        addr.ensure_address(pod, index, ep.address)
    links.set_up(pod, index)
    for route in routes:
        gw = route.get("gw")
        addr.replace_route(pod, route["dst"], gateway=gw, oif=index)
    return link.get("IFLA_ADDRESS")


def unplug(host: IPRoute, ep: Endpoint) -> None:
    """Delete the pair from the host end (the pod end goes with it); absent is fine."""
    name = ep.host_ifname or host_veth_name(ep.container_id, ep.ifname)
    links.remove(host, name)


def verify(host: IPRoute, ep: Endpoint, *, bridge_index: int | None, routes: list[dict]) -> None:
    """Raise PodnetError unless the pod's interface, address and routes are in place."""
    name = ep.host_ifname or host_veth_name(ep.container_id, ep.ifname)
    host_index = links.lookup(host, name)
    if host_index is None:
        raise PodnetError(KERNEL_FAILURE, f"host interface {name} is missing")
    if bridge_index is not None:
        link = links.get(host, host_index)
        if link is None or link.get("IFLA_MASTER") != bridge_index:
            raise PodnetError(KERNEL_FAILURE, f"{name} is not attached to its bridge")
    with netns.iproute(ep.netns) as pod:
        index = links.lookup(pod, ep.ifname)
        if index is None:
            raise PodnetError(KERNEL_FAILURE, f"{ep.ifname} is missing in the sandbox")
        if ep.address and ep.address not in addr.addresses(pod, index):
            raise PodnetError(KERNEL_FAILURE, f"{ep.ifname} lacks its address {ep.address}")
        have = {
            (_dst(r), r.get("RTA_GATEWAY"))
            for r in pod.get_routes(family=2, table=254)
        }
        for route in routes:
            want = (str(ipaddress.ip_network(
                "0.0.0.0/0" if route["dst"] == "default" else route["dst"])), route.get("gw"))
            if want not in have:
                raise PodnetError(KERNEL_FAILURE, f"route {route['dst']} missing in the sandbox")


def _dst(route) -> str:  # type: ignore[no-untyped-def]
    dst = route.get("RTA_DST") or "0.0.0.0"
    return f"{dst}/{route['dst_len']}"
