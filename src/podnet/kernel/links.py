"""Links: bridges, veth pairs, MTU, MAC, state, bridge-port flags. Idempotent helpers.

Every helper takes an open netlink handle (see netns.iproute) so a caller can batch
several operations on one socket. Failures leave as PodnetError (kernel/failure.py).
"""

from __future__ import annotations

import errno
from typing import Any

from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel.failure import failing, is_errno, is_kernel_error
from podnet.kernel.netns import Netlink
from podnet.kernel_names import IFNAMSIZ

__all__ = ["IFNAMSIZ"]


def get_by_name(nl: Netlink, name: str) -> Any | None:
    """The link message of `name` (one RTM_GETLINK, no dump), or None."""
    try:
        return nl.link("get", ifname=name)[0]
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.ENODEV):
            return None
        with failing("look up link", name):
            raise


def lookup(nl: Netlink, name: str) -> int | None:
    link = get_by_name(nl, name)
    return link["index"] if link is not None else None


def get(nl: Netlink, index: int) -> Any | None:
    try:
        return nl.get_links(index)[0]
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.ENODEV):
            return None
        with failing("look up link", f"#{index}"):
            raise


def kind_of(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def name_of(link: Any) -> str:
    return str(link.get("IFLA_IFNAME") or "")


def mtu_of(link: Any) -> int:
    return int(link.get("IFLA_MTU") or 0)


def master_of(link: Any) -> int | None:
    master = link.get("IFLA_MASTER")
    return int(master) if master else None


def is_up(link: Any) -> bool:
    return bool(link["flags"] & 1)


def ensure_bridge(nl: Netlink, name: str, *, mtu: int | None = None) -> int:
    """The bridge `name`, created if absent, up; fails if `name` is another kind."""
    return ensure_bridge_created(nl, name, mtu=mtu)[0]


def ensure_bridge_created(nl: Netlink, name: str, *, mtu: int | None = None
                          ) -> tuple[int, bool]:
    """ensure_bridge, also telling whether this call created it."""
    link = get_by_name(nl, name)
    created = link is None
    if link is None:
        kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge", "state": "up"}
        if mtu:
            kwargs["mtu"] = mtu
        try:
            nl.link("add", **kwargs)
        except Exception as exc:
            if not (is_kernel_error(exc) and is_errno(exc, errno.EEXIST)):
                with failing("create bridge", name):
                    raise
        link = get_by_name(nl, name)
    if link is None or kind_of(link) != "bridge":
        raise PodnetError(KERNEL_FAILURE, f"{name!r} already exists but is not a bridge")
    index = int(link["index"])
    if not is_up(link):
        set_up(nl, index)
    return index, created


def _veth_spec(host_name: str, peer_name: str, *, mtu: int | None, master: int | None,
               peer_mac: str | None, peer_netns_fd: int | None) -> dict[str, Any]:
    # txqlen 0 as the reference plugins create veths: they run without a queue anyway
    peer: dict[str, Any] = {"ifname": peer_name, "txqlen": 0}
    if peer_netns_fd is not None:
        peer["net_ns_fd"] = peer_netns_fd
    if peer_mac:
        peer["address"] = peer_mac
    kwargs: dict[str, Any] = {"ifname": host_name, "kind": "veth", "peer": peer, "state": "up",
                              "txqlen": 0}
    if master is not None:
        kwargs["master"] = master
    if mtu:
        kwargs["mtu"] = mtu
        peer["mtu"] = mtu
    return kwargs


def create_veth_into(
    nl: Netlink, host_name: str, peer_name: str, peer_netns_fd: int | None, *,
    mtu: int | None, master: int | None = None, peer_mac: str | None = None,
) -> int:
    """A veth pair whose peer is created directly inside another namespace (or, with
    peer_netns_fd None, in this one); the host end is up (and enslaved to `master`) in
    the same request. Returns the host end's index."""
    spec = _veth_spec(host_name, peer_name, mtu=mtu, master=master, peer_mac=peer_mac,
                      peer_netns_fd=peer_netns_fd)
    try:
        nl.link("add", **spec)
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.EEXIST):
            raise PodnetError(
                KERNEL_FAILURE, f"interface {host_name} or {peer_name} already exists"
            ) from exc
        with failing("create veth", host_name):
            raise
    index = lookup(nl, host_name)
    if index is None:
        raise PodnetError(KERNEL_FAILURE, f"veth {host_name} vanished after creation")
    return index


def move_into(nl: Netlink, name: str, netns_fd: int, new_name: str) -> None:
    """Move link `name` into another namespace, renamed to `new_name`, in one request."""
    index = lookup(nl, name)
    if index is None:
        raise PodnetError(KERNEL_FAILURE, f"interface {name} does not exist")
    with failing("move into sandbox", name):
        nl.link("set", index=index, net_ns_fd=netns_fd, ifname=new_name)


def attach_to_bridge(nl: Netlink, index: int, bridge_index: int, *, hairpin: bool) -> None:
    with failing("attach to bridge", f"#{index}"):
        nl.link("set", index=index, master=bridge_index, state="up")
    if hairpin:
        set_hairpin(nl, index)


def set_hairpin(nl: Netlink, index: int) -> None:
    with failing("set hairpin on", f"#{index}"):
        nl.brport("set", index=index, mode=1)


def set_up_by_name(nl: Netlink, name: str) -> None:
    try:
        nl.link("set", ifname=name, state="up")
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.ENODEV):
            return
        with failing("set up", name):
            raise


def set_up(nl: Netlink, index: int) -> None:
    with failing("set up", f"#{index}"):
        nl.link("set", index=index, state="up")


def set_mac(nl: Netlink, index: int, mac: str) -> None:
    with failing("set MAC on", f"#{index}"):
        nl.link("set", index=index, address=mac)


def set_mtu(nl: Netlink, index: int, mtu: int) -> None:
    with failing("set MTU on", f"#{index}"):
        nl.link("set", index=index, mtu=mtu)


def mac_of(nl: Netlink, index: int) -> str | None:
    link = get(nl, index)
    return link.get("IFLA_ADDRESS") if link is not None else None


def remove(nl: Netlink, name: str) -> bool:
    """Delete a link by name; False if it did not exist."""
    index = lookup(nl, name)
    if index is None:
        return False
    try:
        nl.link("del", index=index)
    except Exception as exc:
        if is_kernel_error(exc) and is_errno(exc, errno.ENODEV, errno.ENOENT):
            return False
        with failing("delete link", name):
            raise
    return True


def all_links(nl: Netlink) -> list[Any]:
    with failing("list links"):
        return list(nl.get_links())


def ports_of(nl: Netlink, bridge_index: int) -> list[int]:
    return [link["index"] for link in all_links(nl) if master_of(link) == bridge_index]


def names_with_prefix(nl: Netlink, prefix: str) -> list[str]:
    return sorted(name for link in all_links(nl) if (name := name_of(link)).startswith(prefix))
