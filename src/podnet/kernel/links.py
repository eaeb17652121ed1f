"""Links: bridges, veth pairs, MTU, state, bridge-port flags. Idempotent helpers.

Every helper takes an open pyroute2 IPRoute (see netns.iproute) so a caller can batch
several operations on one socket.
"""

from __future__ import annotations

import errno
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.errors import KERNEL_FAILURE, PodnetError

IFNAMSIZ = 15


def get_by_name(ipr: IPRoute, name: str) -> Any | None:
    """The link message of `name` (one RTM_GETLINK, no dump), or None."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def lookup(ipr: IPRoute, name: str) -> int | None:
    link = get_by_name(ipr, name)
    return link["index"] if link is not None else None


def get(ipr: IPRoute, index: int) -> Any | None:
    try:
        return ipr.get_links(index)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def kind_of(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def ensure_bridge(ipr: IPRoute, name: str, *, mtu: int | None = None) -> int:
    """The bridge `name`, created if absent, up; fails if `name` is another kind."""
    return ensure_bridge_created(ipr, name, mtu=mtu)[0]


def ensure_bridge_created(ipr: IPRoute, name: str, *, mtu: int | None = None
                          ) -> tuple[int, bool]:
    """ensure_bridge, also telling whether this call created it."""
    link = get_by_name(ipr, name)
    created = link is None
    if link is None:
        kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge", "state": "up"}
        if mtu:
            kwargs["mtu"] = mtu
        try:
            ipr.link("add", **kwargs)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise PodnetError(KERNEL_FAILURE, f"cannot create bridge {name}", str(exc)) from exc
        link = get_by_name(ipr, name)
    if link is None or kind_of(link) != "bridge":
        raise PodnetError(KERNEL_FAILURE, f"{name!r} already exists but is not a bridge")
    index = link["index"]
    if not link["flags"] & 1:
        ipr.link("set", index=index, state="up")
    return index, created


def create_veth_into(
    ipr: IPRoute, host_name: str, peer_name: str, peer_netns_fd: int, *, mtu: int | None,
    master: int | None = None,
) -> int:
    """A veth pair whose peer is created directly inside another namespace; the host end
    is up (and enslaved to `master`) in the same request."""
    # txqlen 0 as the reference plugins create veths: they run without a queue anyway
    peer: dict[str, Any] = {"ifname": peer_name, "net_ns_fd": peer_netns_fd, "txqlen": 0}
    kwargs: dict[str, Any] = {"ifname": host_name, "kind": "veth", "peer": peer, "state": "up",
                              "txqlen": 0}
    if master is not None:
        kwargs["master"] = master
    if mtu:
        kwargs["mtu"] = mtu
        peer["mtu"] = mtu
    try:
        ipr.link("add", **kwargs)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise PodnetError(
                KERNEL_FAILURE, f"interface {host_name} or {peer_name} already exists"
            ) from exc
        raise PodnetError(KERNEL_FAILURE, f"cannot create veth {host_name}", str(exc)) from exc
    index = lookup(ipr, host_name)
    if index is None:
        raise PodnetError(KERNEL_FAILURE, f"veth {host_name} vanished after creation")
    return index


def attach_to_bridge(ipr: IPRoute, index: int, bridge_index: int, *, hairpin: bool) -> None:
    ipr.link("set", index=index, master=bridge_index, state="up")
    if hairpin:
        set_hairpin(ipr, index)


def set_hairpin(ipr: IPRoute, index: int) -> None:
    ipr.brport("set", index=index, mode=1)


def set_up_by_name(ipr: IPRoute, name: str) -> None:
    try:
        ipr.link("set", ifname=name, state="up")
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def set_up(ipr: IPRoute, index: int) -> None:
    ipr.link("set", index=index, state="up")


def mac_of(ipr: IPRoute, index: int) -> str | None:
    link = get(ipr, index)
    return link.get("IFLA_ADDRESS") if link is not None else None


def remove(ipr: IPRoute, name: str) -> bool:
    """Delete a link by name; False if it did not exist."""
    index = lookup(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def ports_of(ipr: IPRoute, bridge_index: int) -> list[int]:
    return [link["index"] for link in ipr.get_links() if link.get("IFLA_MASTER") == bridge_index]


def names_with_prefix(ipr: IPRoute, prefix: str) -> list[str]:
    return sorted(
        name
        for link in ipr.get_links()
        if (name := link.get("IFLA_IFNAME") or "").startswith(prefix)
    )
