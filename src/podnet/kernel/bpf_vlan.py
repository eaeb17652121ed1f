"""802.1Q VLAN tagging with tc BPF, for kernels without 802.1q devices.

Why: this kernel has no VLAN devices (`ip link add ... type vlan` fails) and no tc vlan
action, but cls_bpf programs may call bpf_skb_vlan_push / bpf_skb_vlan_pop. So a tagged
link is built from plain devices and programs:

- access port (one VLAN on a device): `push_program(vid)` at egress tags every frame the
  device sends, `pop_program(vid)` at ingress strips the tag of received frames and drops
  frames of another VLAN (and, unless allowed, untagged ones). This is the `vlan` network
  type's uplink and the nested-vlan pod's NIC.
- VLAN "child devices" on a trunk (many VLANs on one device, as eth0.100, eth0.200 would
  be): `demux_program(vid_map)` at the trunk's ingress pops the tag and redirects the
  frame to the egress of the device the map names for its VID (a veth whose peer plays
  the child); `mux_program(vid, trunk_ifindex)` at the ingress of such a device tags its
  frames and redirects them out of the trunk.

How tags look to a program: the receive path moves a frame's 802.1Q header into skb
metadata before tc ingress runs (skb_vlan_untag), so ingress programs read
__sk_buff.vlan_present / vlan_tci / vlan_proto rather than packet bytes; push puts the
tag in metadata too, and a device without VLAN offload gets it written into the frame on
transmit. Packet captures (AF_PACKET auxdata, `tcpdump -e`) show it either way.

Verdicts: a frame these programs let through gets TC_ACT_UNSPEC, so a later filter on
the same hook (a higher prio number than PRIO, e.g. the eBPF fast path) still sees it,
untagged; with none left the kernel passes it. Drops are TC_ACT_SHOT.

On devices: ensure_access_port / ensure_trunk / ensure_vlan_child attach (idempotently,
by comparing the filter names that record what each program does), remove() detaches,
trunk_vid_map() re-opens an attached trunk's VID map after a restart.

Counters: give `stats=` a map from create_stats_map() (a per-CPU array) and the programs
count into it; read_stats() sums the CPUs. Layout: see STATS.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable

from pyroute2 import IPRoute

from podnet.errors import INVALID_CONFIG, PodnetError
from podnet.kernel import bpf, tc
from podnet.kernel.bpf_asm import (
    R0,
    R1,
    R2,
    R3,
    R6,
    R7,
    R10,
    SKB,
    TC_ACT_SHOT,
    TC_ACT_UNSPEC,
    Asm,
)

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VID_MAX = 4094
VID_MAP_ENTRIES = 4096

# a frame these programs let through: the next filter on the hook (if any) runs next
PASS = TC_ACT_UNSPEC
# tc priority of the VLAN programs: before anything attached with a higher number
PRIO = 10

# counter slots of the stats map
STATS = ("passed", "dropped_vid", "dropped_untagged", "untagged_passed", "errors")
PASSED, DROPPED_VID, DROPPED_UNTAGGED, UNTAGGED_PASSED, ERRORS = range(len(STATS))


def check_vid(vid: int) -> int:
    if isinstance(vid, bool) or not isinstance(vid, int) or not 1 <= vid <= VID_MAX:
        raise PodnetError(INVALID_CONFIG, f"VLAN id must be 1-{VID_MAX}", repr(vid))
    return vid


def _tci(vid: int, pcp: int) -> int:
    if not 0 <= pcp <= 7:
        raise PodnetError(INVALID_CONFIG, "VLAN priority (PCP) must be 0-7", repr(pcp))
    return pcp << 13 | check_vid(vid)


def _proto(proto: int) -> int:
    if proto not in (ETH_P_8021Q, ETH_P_8021AD):
        raise PodnetError(INVALID_CONFIG, "VLAN protocol must be 802.1Q (0x8100) or 802.1ad "
                          "(0x88a8)", hex(proto))
    return socket.htons(proto)  # the helpers and __sk_buff.vlan_proto use network order


def create_stats_map(name: str = "pn_vlan_stats") -> bpf.Map:
    return bpf.create_map(bpf.MapType.PERCPU_ARRAY, 4, 8, len(STATS), name=name)


def read_stats(stats: bpf.Map) -> dict[str, int]:
    """Counters summed over CPUs, by name."""
    out = {}
    for i, name in enumerate(STATS):
        slots = stats.lookup_percpu(struct.pack("<I", i)) or []
        out[name] = sum(struct.unpack("<Q", s)[0] for s in slots)
    return out


def create_vid_map(name: str = "pn_vlan_vids") -> bpf.Map:
    """VID (u32 key 0-4095) -> target ifindex (u32; 0: no device for that VLAN)."""
    return bpf.create_map(bpf.MapType.ARRAY, 4, 4, VID_MAP_ENTRIES, name=name)


def set_vid_target(vids: bpf.Map, vid: int, ifindex: int) -> None:
    vids.update(struct.pack("<I", check_vid(vid)), struct.pack("<I", ifindex))


def clear_vid_target(vids: bpf.Map, vid: int) -> None:
    vids.update(struct.pack("<I", check_vid(vid)), struct.pack("<I", 0))


def _count(a: Asm, stats: bpf.Map | None, slot: int) -> None:
    if stats is not None:
        a.count(stats.fd, slot)


def _push(a: Asm, proto: int, tci: int) -> None:
    """Tag the frame (ctx in r6); on a helper error count it and drop."""
    a.mov(R1, R6).mov(R2, _proto(proto)).mov(R3, tci)
    a.call("skb_vlan_push")
    a.jmp("jne", R0, 0, "error")


def _error_exit(a: Asm, stats: bpf.Map | None) -> None:
    a.label("error")
    _count(a, stats, ERRORS)
    a.ret(TC_ACT_SHOT)


def push_program(vid: int, *, pcp: int = 0, proto: int = ETH_P_8021Q,
                 stats: bpf.Map | None = None) -> Asm:
    """Egress: tag every frame with `vid` (a frame already tagged gets a second, outer
    tag, as 802.1ad stacking does)."""
    tci = _tci(vid, pcp)
    a = Asm()
    a.mov(R6, R1)
    _push(a, proto, tci)
    _count(a, stats, PASSED)
    a.ret(PASS)
    _error_exit(a, stats)
    return a


def _classify_tag(a: Asm, vid: int | None, proto: int) -> None:
    """Jump to "untagged" / "wrong_vid", or fall through with the VID in r7; ctx in r6."""
    a.ldx("w", R7, R6, SKB["vlan_present"])
    a.jmp("jeq", R7, 0, "untagged")
    a.ldx("w", R7, R6, SKB["vlan_proto"])
    a.jmp("jne", R7, _proto(proto), "wrong_vid")
    a.ldx("w", R7, R6, SKB["vlan_tci"])
    a.and_(R7, 0x0FFF)
    if vid is not None:
        a.jmp("jne", R7, check_vid(vid), "wrong_vid")


def _tail(a: Asm, stats: bpf.Map | None, *, allow_untagged: bool) -> None:
    a.label("untagged")
    if allow_untagged:
        _count(a, stats, UNTAGGED_PASSED)
        a.ret(PASS)
    else:
        _count(a, stats, DROPPED_UNTAGGED)
        a.ret(TC_ACT_SHOT)
    a.label("wrong_vid")
    _count(a, stats, DROPPED_VID)
    a.ret(TC_ACT_SHOT)
    _error_exit(a, stats)


def pop_program(vid: int | None = None, *, proto: int = ETH_P_8021Q,
                allow_untagged: bool = False, stats: bpf.Map | None = None) -> Asm:
    """Ingress: strip the tag. With `vid`, frames of any other VLAN (or another TPID) are
    dropped; untagged frames are dropped unless allow_untagged."""
    a = Asm()
    a.mov(R6, R1)
    _classify_tag(a, vid, proto)
    a.mov(R1, R6)
    a.call("skb_vlan_pop")
    a.jmp("jne", R0, 0, "error")
    _count(a, stats, PASSED)
    a.ret(PASS)
    _tail(a, stats, allow_untagged=allow_untagged)
    return a


def demux_program(vids: bpf.Map, *, proto: int = ETH_P_8021Q, allow_untagged: bool = True,
                  stats: bpf.Map | None = None) -> Asm:
    """Trunk ingress: a frame tagged VID goes, untagged, out of the device vids[VID] names
    (bpf_redirect to its egress); a VID without a device is dropped. Untagged frames
    (the native VLAN) stay on the trunk device unless allow_untagged is False."""
    a = Asm()
    a.mov(R6, R1)
    _classify_tag(a, None, proto)
    a.stx("w", R10, -8, R7)
    a.mov(R2, R10).add(R2, -8)
    a.ld_map_fd(R1, vids.fd)
    a.call("map_lookup_elem")
    a.jmp("jeq", R0, 0, "wrong_vid")
    a.ldx("w", R7, R0, 0)              # r7 = target ifindex
    a.jmp("jeq", R7, 0, "wrong_vid")
    a.mov(R1, R6)
    a.call("skb_vlan_pop")
    a.jmp("jne", R0, 0, "error")
    _count(a, stats, PASSED)
    a.mov(R1, R7).mov(R2, 0)
    a.call("redirect")                 # TC_ACT_REDIRECT
    a.exit()
    _tail(a, stats, allow_untagged=allow_untagged)
    return a


def mux_program(vid: int, trunk_ifindex: int, *, pcp: int = 0, proto: int = ETH_P_8021Q,
                stats: bpf.Map | None = None) -> Asm:
    """Ingress of a VLAN child's device: tag the frame with `vid` and send it out of the
    trunk (bpf_redirect to the trunk's egress)."""
    tci = _tci(vid, pcp)
    if trunk_ifindex <= 0:
        raise PodnetError(INVALID_CONFIG, "trunk ifindex must be positive", repr(trunk_ifindex))
    a = Asm()
    a.mov(R6, R1)
    _push(a, proto, tci)
    _count(a, stats, PASSED)
    a.mov(R1, trunk_ifindex).mov(R2, 0)
    a.call("redirect")
    a.exit()
    _error_exit(a, stats)
    return a


def load(program: Asm, name: str) -> bpf.Program:
    """Load one of the programs above as a SCHED_CLS program."""
    return bpf.load_program(program, name=name)


# --- attached to devices: ensure / remove / adopt --------------------------------------
# A filter's name records what its program does ("pn_vlan_pop vid=100 stats=7"), so an
# ensure_* call compares names and changes nothing when the device already does the
# right thing (after an agent restart too); otherwise it replaces the filter in place.
# The programs are closed after attaching: the filters keep them (and their maps) alive.


def _ensure(ipr: IPRoute, index: int, direction: tc.Direction, ident: str,
            build: Callable[[], Asm], prog_name: str) -> bool:
    if any(f.prio == PRIO and f.name == ident for f in tc.filters(ipr, index, direction)):
        return False
    with load(build(), prog_name) as prog:
        tc.attach(ipr, index, direction, prog.fd, name=ident, prio=PRIO)
    return True


def _suffix(stats: bpf.Map | None) -> str:
    return f" stats={stats.id}" if stats is not None else ""


def ensure_access_port(ipr: IPRoute, index: int, vid: int, *, allow_untagged: bool = False,
                       stats: bpf.Map | None = None) -> bool:
    """Device `index` carries VLAN `vid` tagged: push at egress, pop (only `vid`) at
    ingress. True if anything was (re)attached."""
    check_vid(vid)
    untag = " untagged" if allow_untagged else ""
    pushed = _ensure(ipr, index, "egress", f"pn_vlan_push vid={vid}{_suffix(stats)}",
                     lambda: push_program(vid, stats=stats), "pn_vlan_push")
    popped = _ensure(ipr, index, "ingress", f"pn_vlan_pop vid={vid}{untag}{_suffix(stats)}",
                     lambda: pop_program(vid, allow_untagged=allow_untagged, stats=stats),
                     "pn_vlan_pop")
    return pushed or popped


def ensure_trunk(ipr: IPRoute, index: int, vids: bpf.Map, *, allow_untagged: bool = True,
                 stats: bpf.Map | None = None) -> bool:
    """Device `index` is a trunk: each tagged frame goes out of the device `vids` maps its
    VID to (set_vid_target), untagged. True if the filter was (re)attached."""
    untag = "" if allow_untagged else " no-untagged"
    return _ensure(ipr, index, "ingress", f"pn_vlan_demux map={vids.id}{untag}"
                   f"{_suffix(stats)}",
                   lambda: demux_program(vids, allow_untagged=allow_untagged, stats=stats),
                   "pn_vlan_demux")


def ensure_vlan_child(ipr: IPRoute, index: int, vid: int, trunk_index: int, *,
                      stats: bpf.Map | None = None) -> bool:
    """Frames entering device `index` leave the trunk tagged with `vid` (pair it with
    set_vid_target(vids, vid, index) on the trunk for the way back)."""
    check_vid(vid)
    return _ensure(ipr, index, "ingress", f"pn_vlan_mux vid={vid} trunk={trunk_index}"
                   f"{_suffix(stats)}",
                   lambda: mux_program(vid, trunk_index, stats=stats), "pn_vlan_mux")


def remove(ipr: IPRoute, index: int) -> bool:
    """Detach every VLAN program from the device (both hooks); absence is fine."""
    removed = [tc.detach(ipr, index, d, prio=PRIO, handle=f.handle)
               for d in tc.DIRECTIONS for f in tc.filters(ipr, index, d)
               if f.prio == PRIO and f.name.startswith("pn_vlan_")]
    return any(removed)


def attached(ipr: IPRoute, index: int) -> dict[str, str]:
    """The VLAN filters on the device, by hook: {"egress": "pn_vlan_push vid=100", ...}."""
    out: dict[str, str] = {}
    for direction in tc.DIRECTIONS:
        for f in tc.filters(ipr, index, direction):
            if f.prio == PRIO and f.name.startswith("pn_vlan_"):
                out[direction] = f.name
    return out


def trunk_vid_map(ipr: IPRoute, index: int) -> bpf.Map | None:
    """The VID map of the trunk program attached to the device (a new fd), for a
    restarted agent to keep editing it; None if no trunk program is attached."""
    name = attached(ipr, index).get("ingress", "")
    match = re.match(r"pn_vlan_demux map=(\d+)", name)
    return bpf.Map.from_id(int(match.group(1))) if match else None
