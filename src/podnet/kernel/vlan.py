"""802.1q VLAN devices, and whether this kernel has them at all.

The kernel here has no 802.1q module: creating a device answers EOPNOTSUPP. Callers
show the kernel's own words (netlink extended ack), so a skipped test or an
"unavailable" bench row says exactly why; kernel/bpf_vlan.py tags frames with tc BPF
instead where that is enough.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel import links, netns
from podnet.kernel.failure import describe, is_kernel_error
from podnet.kernel.netns import Netlink

NETLINK_EXT_ACK = 11
SOL_NETLINK = 270


@contextlib.contextmanager
def iproute_ext_ack(ns: str) -> Iterator[Netlink]:
    """A netlink handle in `ns` whose errors carry the kernel's extended-ack text."""
    from pyroute2 import IPRoute

    sock = netns.socket_in(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    ipr = IPRoute(use_socket=sock, ext_ack=True)
    try:
        yield ipr
    finally:
        ipr.close()


def create(nl: Netlink, parent: int, name: str, vid: int) -> int:
    """An 802.1q child `name` of link `parent` with VLAN id `vid`; returns its index."""
    try:
        nl.link("add", ifname=name, kind="vlan", link=parent, vlan_id=vid)
    except Exception as exc:
        if not is_kernel_error(exc):
            raise
        raise PodnetError(KERNEL_FAILURE, f"cannot create 802.1q device {name}",
                          f"kernel: {describe(exc)[1]}") from exc
    index = links.lookup(nl, name)
    if index is None:
        raise PodnetError(KERNEL_FAILURE, f"802.1q device {name} vanished after creation")
    return index


def unsupported_reason(ns: str) -> str | None:
    """None if this kernel makes 802.1q devices, else its refusal, e.g. "RTM_NEWLINK
    kind vlan: [Errno 95] Unknown device type (Operation not supported)". Tried on a
    scratch veth pair inside `ns` (a namespace of the caller's), removed afterwards."""
    with iproute_ext_ack(ns) as nl:
        links.create_veth_into(nl, "pnvlprobe0", "pnvlprobe1", None, mtu=None)
        try:
            parent = links.lookup(nl, "pnvlprobe0")
            nl.link("add", ifname="pnvlprobe0.1", kind="vlan", link=parent, vlan_id=1)
        except Exception as exc:
            if not is_kernel_error(exc):
                raise
            return f"RTM_NEWLINK kind vlan: {describe(exc)[1]}"
        finally:
            links.remove(nl, "pnvlprobe0")
    return None
