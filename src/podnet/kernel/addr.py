"""Addresses and routes. Writes are add-tolerating-EEXIST or replace; removes tolerate absence."""

from __future__ import annotations

import errno
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


def ensure_address(ipr: IPRoute, index: int, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    try:
        ipr.addr(
            "add",
            index=index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            broadcast=str(iface.network.broadcast_address) if iface.version == 4 else None,
        )
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def addresses(ipr: IPRoute, index: int) -> list[str]:
    return [
        f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
        for a in ipr.get_addr(index=index)
    ]


def replace_route(
    ipr: IPRoute,
    dst: str,
    *,
    gateway: str | None = None,
    oif: int | None = None,
    onlink: bool = False,
    mtu: int | None = None,
) -> None:
    """Install or overwrite a route. dst is a CIDR or 'default'."""
    kwargs: dict = {"dst": "0.0.0.0/0" if dst == "default" else dst}
    if gateway:
        kwargs["gateway"] = gateway
    if oif is not None:
        kwargs["oif"] = oif
    if onlink:
        kwargs["flags"] = 4  # RTNH_F_ONLINK
    if mtu:
        kwargs["metrics"] = {"RTAX_MTU": mtu}
    ipr.route("replace", **kwargs)


def remove_route(ipr: IPRoute, dst: str, **match: object) -> bool:
    try:
        ipr.route("del", dst="0.0.0.0/0" if dst == "default" else dst, **match)
    except NetlinkError as exc:
        if exc.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            return False
        raise
    return True
