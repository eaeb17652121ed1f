"""VXLAN device, permanent neighbour and FDB entries (flannel's vxlan backend shape).

No learning and no L2/L3-miss upcalls: the agent knows every peer from the store and
programs, per peer, a permanent neighbour entry (peer VTEP IP -> VTEP MAC), an FDB entry
(VTEP MAC -> peer's public IP) and an onlink route, in that order, so the route never
points at an unresolvable next hop. All writes are `replace`: re-running them is a no-op.
"""

from __future__ import annotations

import errno
from typing import Any

from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel import links, neigh
from podnet.kernel.failure import failing, is_errno, is_kernel_error
from podnet.kernel.netns import Netlink

NUD_PERMANENT = neigh.NUD_PERMANENT
NTF_SELF = 0x02
AF_BRIDGE = 7


def ensure_vxlan(
    nl: Netlink, name: str, *, vni: int, port: int, local: str, underlay_index: int,
    mtu: int, mac: str | None,
) -> int:
    """The VXLAN device, created if absent (with a fixed MAC) and verified if present."""
    index = links.lookup(nl, name)
    if index is None:
        kwargs: dict[str, Any] = dict(
            ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port, vxlan_local=local,
            vxlan_link=underlay_index, vxlan_learning=0, vxlan_udp_csum=0, mtu=mtu,
        )
        if mac:
            kwargs["address"] = mac
        with failing("create vxlan device", name):
            nl.link("add", **kwargs)
        index = links.lookup(nl, name)
        if index is None:
            raise PodnetError(KERNEL_FAILURE, f"vxlan device {name} vanished after creation")
    link = links.get(nl, index)
    if link is None or links.kind_of(link) != "vxlan":
        raise PodnetError(KERNEL_FAILURE, f"{name!r} already exists but is not a vxlan device")
    data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
    if data.get("IFLA_VXLAN_ID") != vni or data.get("IFLA_VXLAN_LOCAL") != local:
        raise PodnetError(
            KERNEL_FAILURE, f"vxlan device {name} exists with another VNI or local address",
            f"vni {data.get('IFLA_VXLAN_ID')} local {data.get('IFLA_VXLAN_LOCAL')}",
        )
    if link.get("IFLA_MTU") != mtu:
        links.set_mtu(nl, index, mtu)
    if not link["flags"] & 1:
        links.set_up(nl, index)
    return index


def replace_neighbour(nl: Netlink, index: int, ip: str, mac: str) -> None:
    neigh.replace(nl, index, ip, mac)


def remove_neighbour(nl: Netlink, index: int, ip: str) -> None:
    neigh.remove(nl, index, ip)


def neighbours(nl: Netlink, index: int) -> list[str]:
    """IPv4 addresses with a neighbour entry on link `index`."""
    return neigh.on_link(nl, index)


def replace_fdb(nl: Netlink, index: int, mac: str, dst: str) -> None:
    with failing("replace fdb entry", f"{mac} dst {dst}"):
        nl.fdb("replace", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT,
               flags=NTF_SELF)


def append_fdb(nl: Netlink, index: int, mac: str, dst: str) -> None:
    """An extra FDB destination for `mac` (the all-zero MAC: head-end replication)."""
    try:
        nl.fdb("append", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT,
               flags=NTF_SELF)
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.EEXIST):
            return
        with failing("append fdb entry", f"{mac} dst {dst}"):
            raise


def remove_fdb(nl: Netlink, index: int, mac: str, dst: str) -> None:
    try:
        nl.fdb("del", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF)
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return
        with failing("delete fdb entry", f"{mac} dst {dst}"):
            raise


def fdb_entries(nl: Netlink, index: int) -> list[tuple[str, str]]:
    """(MAC, remote IP) of every FDB entry with a destination on VXLAN link `index`."""
    with failing("list fdb of", f"#{index}"):
        found = nl.fdb("dump", ifindex=index)
    return [(mac, dst) for e in found
            if (mac := e.get("NDA_LLADDR")) and (dst := e.get("NDA_DST"))]
