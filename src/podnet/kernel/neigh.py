"""Neighbour (ARP) entries: permanent ones replaced idempotently, removals tolerate absence."""

from __future__ import annotations

import errno

from podnet.kernel.failure import failing, is_errno, is_kernel_error
from podnet.kernel.netns import Netlink

NUD_PERMANENT = 0x80


def replace(nl: Netlink, index: int, ip: str, mac: str) -> None:
    """A permanent entry ip -> mac on link `index`."""
    with failing("replace neighbour", f"{ip} lladdr {mac}"):
        nl.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)


def remove(nl: Netlink, index: int, ip: str) -> None:
    try:
        nl.neigh("del", dst=ip, ifindex=index)
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.ENOENT, errno.ESRCH, errno.ENODEV,
                                             errno.EINVAL):
            return
        with failing("delete neighbour", ip):
            raise


def on_link(nl: Netlink, index: int) -> list[str]:
    """IPv4 addresses with a neighbour entry on link `index`."""
    with failing("list neighbours of", f"#{index}"):
        found = nl.get_neighbours(family=2, ifindex=index)
    return [dst for entry in found if (dst := entry.get("NDA_DST"))]
