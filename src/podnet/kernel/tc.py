"""tc attachment of BPF programs: a clsact qdisc and direct-action cls_bpf filters.

Why clsact + direct-action: clsact gives an ingress hook (parent ffff:fff2) and an
egress hook (ffff:fff3) on any device without a queueing discipline in the way, and a
direct-action filter's return value is the verdict (TC_ACT_OK, SHOT, REDIRECT), so one
program classifies and acts. A filter holds its own reference to the program, so traffic
keeps flowing while no process holds an fd; `filters()` reports each attached program's
id (TCA_BPF_ID) so a restarted agent can adopt it (bpf.Program.from_id).

Every helper takes an open pyroute2 IPRoute bound to the namespace (netns.iproute(ns)),
as kernel/links.py does. Attach is `replace` (idempotent, also swaps the program in
place without a gap); detach and removal tolerate absence.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Any, Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.errors import KERNEL_FAILURE, PodnetError

Direction = Literal["ingress", "egress"]
DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")
CLSACT_HANDLE = 0xFFFF0000
PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
ETH_P_ALL = 0x0003
TCA_BPF_FLAG_ACT_DIRECT = 1
# cls_bpf attributes pyroute2 (0.9) does not name: decoded from the raw attribute
TCA_BPF_TAG = 10
TCA_BPF_ID = 11
_ABSENT = (errno.ENOENT, errno.EINVAL, errno.ENODEV)


@dataclass(frozen=True)
class BpfFilter:
    """One cls_bpf filter as the kernel reports it."""

    direction: Direction
    prio: int
    handle: int
    prog_id: int
    name: str
    tag: str
    direct_action: bool


def _parent(direction: Direction) -> int:
    try:
        return PARENTS[direction]
    except KeyError:
        raise PodnetError(KERNEL_FAILURE, "tc direction must be ingress or egress",
                          str(direction)) from None


def _kernel_error(op: str, index: int, exc: NetlinkError) -> PodnetError:
    return PodnetError(KERNEL_FAILURE, f"tc {op} on ifindex {index} failed", str(exc))


def clsact_present(ipr: IPRoute, index: int) -> bool:
    return _ingress_qdisc_kind(ipr, index) == "clsact"


def _ingress_qdisc_kind(ipr: IPRoute, index: int) -> str | None:
    try:
        qdiscs = list(ipr.get_qdiscs(index=index))
    except NetlinkError as exc:
        raise _kernel_error("qdisc dump", index, exc) from exc
    for q in qdiscs:
        if q["index"] == index and q["handle"] == CLSACT_HANDLE:
            return q.get_attr("TCA_KIND")
    return None


def ensure_clsact(ipr: IPRoute, index: int) -> None:
    """A clsact qdisc on the device (created if absent); fails if a plain `ingress`
    qdisc holds its place, since that has no egress hook."""
    kind = _ingress_qdisc_kind(ipr, index)
    if kind == "clsact":
        return
    if kind is not None:
        raise PodnetError(KERNEL_FAILURE, f"ifindex {index} has an {kind!r} qdisc where "
                          "clsact is needed")
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _kernel_error("add clsact qdisc", index, exc) from exc
    if _ingress_qdisc_kind(ipr, index) != "clsact":
        raise PodnetError(KERNEL_FAILURE, f"clsact qdisc on ifindex {index} did not appear")


def remove_clsact(ipr: IPRoute, index: int) -> bool:
    """Delete the clsact qdisc and with it every filter on both hooks; False if absent."""
    if not clsact_present(ipr, index):
        return False
    try:
        ipr.tc("del", "clsact", index)
    except NetlinkError as exc:
        if exc.code in _ABSENT:
            return False
        raise _kernel_error("del clsact qdisc", index, exc) from exc
    return True


def attach(ipr: IPRoute, index: int, direction: Direction, prog_fd: int, *,
           name: str = "podnet", prio: int = 1, handle: int = 1) -> BpfFilter:
    """Attach (or replace in place) a direct-action bpf filter running `prog_fd` at the
    device's ingress or egress; ensures clsact first. Returns the filter as dumped."""
    parent = _parent(direction)
    ensure_clsact(ipr, index)
    try:
        ipr.tc("replace-filter", "bpf", index, handle=handle, prio=prio, parent=parent,
               fd=prog_fd, name=name, direct_action=True, protocol=ETH_P_ALL)
    except NetlinkError as exc:
        raise _kernel_error(f"attach bpf filter {name} ({direction}, prio {prio})",
                            index, exc) from exc
    for f in filters(ipr, index, direction):
        if f.prio == prio and f.handle == handle:
            return f
    raise PodnetError(KERNEL_FAILURE, f"bpf filter {name} on ifindex {index} ({direction}) "
                      "did not appear after attach")


def detach(ipr: IPRoute, index: int, direction: Direction, *, prio: int = 1,
           handle: int = 1) -> bool:
    """Remove one bpf filter; False when it (or its qdisc, or the device) is absent."""
    parent = _parent(direction)
    try:  # ENOENT: no such filter; EINVAL: no clsact qdisc; ENODEV: no device
        ipr.tc("del-filter", "bpf", index, handle=handle, prio=prio, parent=parent,
               protocol=ETH_P_ALL)
    except NetlinkError as exc:
        if exc.code in _ABSENT:
            return False
        raise _kernel_error(f"detach bpf filter ({direction}, prio {prio})", index,
                            exc) from exc
    return True


def filters(ipr: IPRoute, index: int, direction: Direction) -> list[BpfFilter]:
    """The bpf filters at one hook of a device, with their program ids; [] if the device
    or its clsact qdisc is absent."""
    parent = _parent(direction)
    try:
        msgs = list(ipr.get_filters(index=index, parent=parent))
    except NetlinkError as exc:
        if exc.code in _ABSENT:
            return []
        raise _kernel_error(f"filter dump ({direction})", index, exc) from exc
    out = []
    for msg in msgs:
        if msg.get_attr("TCA_KIND") != "bpf":
            continue
        opts = msg.get_attr("TCA_OPTIONS")
        if not opts:  # the per-priority chain head carries no options
            continue
        prog_id = _u32(opts, "TCA_BPF_ID", TCA_BPF_ID)
        tag = _raw(opts, "TCA_BPF_TAG", TCA_BPF_TAG)
        flags = opts.get_attr("TCA_BPF_FLAGS") or 0
        out.append(BpfFilter(direction, msg["info"] >> 16, msg["handle"], prog_id or 0,
                             opts.get_attr("TCA_BPF_NAME") or "", tag.hex() if tag else "",
                             bool(flags & TCA_BPF_FLAG_ACT_DIRECT)))
    return out


def program_ids(ipr: IPRoute, index: int) -> dict[Direction, list[int]]:
    """Program ids attached at each hook of a device."""
    return {d: [f.prog_id for f in filters(ipr, index, d)] for d in DIRECTIONS}


def _raw(opts: Any, name: str, nla_type: int) -> bytes | None:
    """The payload of a cls_bpf attribute, named by pyroute2 or left UNKNOWN by it."""
    value = opts.get_attr(name)
    if value is not None:
        return value if isinstance(value, bytes) else struct.pack("<I", value)
    for attr_name, nla in opts["attrs"]:
        if attr_name != "UNKNOWN":
            continue
        data, offset, length = nla.data, nla.offset, nla.length
        if struct.unpack_from("<H", data, offset + 2)[0] & 0x3FFF == nla_type:
            return bytes(data[offset + 4:offset + length])
    return None


def _u32(opts: Any, name: str, nla_type: int) -> int | None:
    raw = _raw(opts, name, nla_type)
    return struct.unpack_from("<I", raw)[0] if raw and len(raw) >= 4 else None
