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

Counters: give `stats=` a map from create_stats_map() (a per-CPU array) and the programs
count into it; read_stats() sums the CPUs. Layout: see STATS.
"""

from __future__ import annotations

import socket
import struct

from podnet.errors import INVALID_CONFIG, PodnetError
from podnet.kernel import bpf
from podnet.kernel.bpf_asm import R0, R1, R2, R3, R6, R7, R10, SKB, TC_ACT_OK, TC_ACT_SHOT, Asm

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VID_MAX = 4094
VID_MAP_ENTRIES = 4096

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
    a.ret(TC_ACT_OK)
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
        a.ret(TC_ACT_OK)
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
    a.ret(TC_ACT_OK)
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
