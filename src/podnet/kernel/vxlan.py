"""VXLAN device, permanent neighbour and FDB entries (flannel's vxlan backend shape).

No learning and no L2/L3-miss upcalls: the agent knows every peer from the store and
programs, per peer, a permanent neighbour entry (peer VTEP IP -> VTEP MAC), an FDB entry
(VTEP MAC -> peer's public IP) and an onlink route, in that order, so the route never
points at an unresolvable next hop. All writes are `replace`: re-running them is a no-op.
"""

from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel import links

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7


def ensure_vxlan(
    ipr: IPRoute, name: str, *, vni: int, port: int, local: str, underlay_index: int,
    mtu: int, mac: str | None,
) -> int:
    """The VXLAN device, created if absent (with a fixed MAC) and verified if present."""
    index = links.lookup(ipr, name)
    if index is None:
        kwargs = dict(
            ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port, vxlan_local=local,
            vxlan_link=underlay_index, vxlan_learning=0, vxlan_udp_csum=0, mtu=mtu,
        )
        if mac:
            kwargs["address"] = mac
        try:
            ipr.link("add", **kwargs)
        except NetlinkError as exc:
            raise PodnetError(KERNEL_FAILURE, f"cannot create vxlan device {name}",
                              str(exc)) from exc
        index = links.lookup(ipr, name)
        assert index is not None
    link = links.get(ipr, index)
    if link is None or links.kind_of(link) != "vxlan":
        raise PodnetError(KERNEL_FAILURE, f"{name!r} already exists but is not a vxlan device")
    data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
    if data.get("IFLA_VXLAN_ID") != vni or data.get("IFLA_VXLAN_LOCAL") != local:
        raise PodnetError(
            KERNEL_FAILURE, f"vxlan device {name} exists with another VNI or local address",
            f"vni {data.get('IFLA_VXLAN_ID')} local {data.get('IFLA_VXLAN_LOCAL')}",
        )
    if link.get("IFLA_MTU") != mtu:
        ipr.link("set", index=index, mtu=mtu)
    if not link["flags"] & 1:
        ipr.link("set", index=index, state="up")
    return index


def replace_neighbour(ipr: IPRoute, index: int, ip: str, mac: str) -> None:
    ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)


def remove_neighbour(ipr: IPRoute, index: int, ip: str) -> None:
    try:
        ipr.neigh("del", dst=ip, ifindex=index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise


def replace_fdb(ipr: IPRoute, index: int, mac: str, dst: str) -> None:
    ipr.fdb("replace", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)


def remove_fdb(ipr: IPRoute, index: int, mac: str, dst: str) -> None:
    try:
        ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise
