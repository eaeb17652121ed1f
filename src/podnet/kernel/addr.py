"""Addresses and routes. Writes are add-tolerating-EEXIST or replace; removes tolerate absence."""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from podnet.kernel.failure import failing, is_errno, is_kernel_error
from podnet.kernel.netns import Netlink

RTNH_F_ONLINK = 4
MAIN_TABLE = 254


def ensure_address(nl: Netlink, index: int, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    try:
        nl.addr(
            "add",
            index=index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            broadcast=str(iface.network.broadcast_address) if iface.version == 4 else None,
        )
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.EEXIST):
            return
        with failing("add address", cidr):
            raise


def addresses(nl: Netlink, index: int) -> list[str]:
    with failing("list addresses of", f"#{index}"):
        return [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in nl.get_addr(index=index)]


def _dst(dst: str) -> str:
    return "0.0.0.0/0" if dst == "default" else dst


def replace_route(
    nl: Netlink,
    dst: str,
    *,
    gateway: str | None = None,
    oif: int | None = None,
    onlink: bool = False,
    mtu: int | None = None,
) -> None:
    """Install or overwrite a route. dst is a CIDR or 'default'."""
    kwargs: dict[str, Any] = {"dst": _dst(dst)}
    if gateway:
        kwargs["gateway"] = gateway
    if oif is not None:
        kwargs["oif"] = oif
    if onlink:
        kwargs["flags"] = RTNH_F_ONLINK
    if mtu:
        kwargs["metrics"] = {"RTAX_MTU": mtu}
    with failing("replace route", f"{dst} via {gateway}" if gateway else dst):
        nl.route("replace", **kwargs)


def remove_route(nl: Netlink, dst: str, **match: object) -> bool:
    try:
        nl.route("del", dst=_dst(dst), **match)
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.ESRCH, errno.ENOENT, errno.ENODEV):
            return False
        with failing("delete route", dst):
            raise
    return True


def routes(nl: Netlink, *, table: int = MAIN_TABLE) -> set[tuple[str, str | None]]:
    """{(destination CIDR, gateway or None)} of the IPv4 routes in `table`."""
    with failing("list routes"):
        found = nl.get_routes(family=2, table=table)
    return {(f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}", r.get("RTA_GATEWAY"))
            for r in found}


def route_destinations(nl: Netlink, *, prefixlen: int | None = None,
                       table: int = MAIN_TABLE) -> list[str]:
    """Destination CIDRs of IPv4 routes in `table` (only of `prefixlen`, when given)."""
    return sorted(dst for dst, _ in routes(nl, table=table)
                  if prefixlen is None or int(dst.rsplit("/", 1)[1]) == prefixlen)
