"""A pod's veth pair, in the two phases every veth-based driver shares (bridge today,
nested and routed drivers later): prepare the host end, then configure the pod end."""

from __future__ import annotations

import contextlib
import ipaddress
import os

from podnet.drivers.base import waiting_name
from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel import addr, links, netns
from podnet.kernel.netns import Netlink
from podnet.kernel_names import host_veth_name
from podnet.model import Port, Route


def host_name(port: Port) -> str:
    return port.host_ifname or host_veth_name(port.device_id, port.ifname)


def create(host: Netlink, port: Port, *, sandbox: str | None, bridge_index: int | None,
           mtu: int | None, hairpin: bool) -> Port:
    """The pair, host end up (on its bridge); the pod end inside `sandbox` under its final
    name, or waiting in this namespace (sandbox None). Rolls back on error."""
    host_if = host_veth_name(port.device_id, port.ifname)
    fd = netns.open_netns(sandbox) if sandbox else None
    peer = port.ifname if sandbox else waiting_name(port)
    with contextlib.ExitStack() as undo:
        if fd is not None:
            undo.callback(os.close, fd)
        rollback = contextlib.ExitStack()
        undo.enter_context(rollback)
        index = links.create_veth_into(host, host_if, peer, fd, mtu=mtu, master=bridge_index,
                                       peer_mac=port.mac_address)
        rollback.callback(links.remove, host, host_if)
        if bridge_index is not None and hairpin:
            links.set_hairpin(host, index)
        port.host_ifname = host_if
        port.mtu = mtu
        rollback.pop_all()
    return port


def configure_pod_side(host: Netlink, port: Port, sandbox: str, routes: tuple[Route, ...]
                       ) -> Port:
    """In the sandbox: the pod end (moved in first if it waits outside), address, up,
    routes. The caller removes the pair if this fails."""
    with netns.iproute(sandbox) as pod:
        links.set_up_by_name(pod, "lo")
        link = links.get_by_name(pod, port.ifname)
        if link is None:
            fd = netns.open_netns(sandbox)
            try:
                links.move_into(host, waiting_name(port), fd, port.ifname)
            finally:
                os.close(fd)
            link = links.get_by_name(pod, port.ifname)
        if link is None:
            raise PodnetError(KERNEL_FAILURE, f"{port.ifname} missing in the sandbox")
        index = int(link["index"])
        if port.address:
            addr.ensure_address(pod, index, port.address)
        links.set_up(pod, index)
        for route in routes:
            addr.replace_route(pod, route.dst, gateway=route.gw, oif=index)
        port.mac_address = link.get("IFLA_ADDRESS") or port.mac_address
        port.sandbox = sandbox
    return port


def remove(host: Netlink, port: Port) -> None:
    """Delete the pair from the host end (the pod end goes with it); absent is fine."""
    links.remove(host, host_name(port))


def verify(host: Netlink, port: Port, *, bridge_index: int | None,
           routes: tuple[Route, ...]) -> None:
    """Raise PodnetError unless the pod's interface, address and routes are in place."""
    name = host_name(port)
    host_index = links.lookup(host, name)
    if host_index is None:
        raise PodnetError(KERNEL_FAILURE, f"host interface {name} is missing")
    if bridge_index is not None:
        link = links.get(host, host_index)
        if link is None or links.master_of(link) != bridge_index:
            raise PodnetError(KERNEL_FAILURE, f"{name} is not attached to its bridge")
    with netns.iproute(port.sandbox) as pod:
        index = links.lookup(pod, port.ifname)
        if index is None:
            raise PodnetError(KERNEL_FAILURE, f"{port.ifname} is missing in the sandbox")
        if port.address and port.address not in addr.addresses(pod, index):
            raise PodnetError(KERNEL_FAILURE, f"{port.ifname} lacks its address {port.address}")
        have = addr.routes(pod)
        for route in routes:
            want = (str(ipaddress.ip_network(route.dst)), route.gw)
            if want not in have:
                raise PodnetError(KERNEL_FAILURE, f"route {route.dst} missing in the sandbox")
