"""kernel/bpf_asm, kernel/bpf, kernel/tc and kernel/bpf_vlan against the running kernel.

Bytecode is checked against encodings computed by hand from include/uapi/linux/bpf.h;
everything else runs on real maps, programs, tc filters and veths in namespaces the test
creates (the `ns` fixture removes them). Frames are witnessed with AF_PACKET captures
(with PACKET_AUXDATA, which is where a tag kept in skb metadata shows, as tcpdump -e
reads it) in a namespace of their own on the wire between the two ends.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from podnet_fixtures import Namespaces, sh

from podnet.errors import INVALID_CONFIG, KERNEL_FAILURE, PodnetError
from podnet.kernel import bpf, bpf_vlan, netns, tc
from podnet.kernel.bpf_asm import (
    HELPERS,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R10,
    SKB,
    TC_ACT_OK,
    Asm,
    AsmError,
    decode,
)

LOAD = bpf.can_load()
needs_bpf = pytest.mark.skipif(not LOAD, reason=f"BPF program load refused: {LOAD.reason}")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


# --- the assembler: bytes computed by hand --------------------------------------------


def _hex(*insns: str) -> bytes:
    return bytes.fromhex("".join(insns).replace(" ", ""))


def test_encoding_of_a_small_program_with_forward_jumps_and_map_fd() -> None:
    a = Asm()
    a.mov(R6, R1)                       # 0  r6 = r1
    a.ldx("w", R7, R6, 20)              # 1  r7 = *(u32 *)(r6 + 20)
    a.jmp("jeq", R7, 0, "out")          # 2  if r7 == 0 goto out (+9)
    a.and_(R7, 0xFFF)                   # 3  r7 &= 0xfff
    a.jmp32("jne", R7, 100, "out")      # 4  if w7 != 100 goto out (+7)
    a.stx("dw", R10, -8, R7)            # 5  *(u64 *)(r10 - 8) = r7
    a.st("w", R10, -12, 7)              # 6  *(u32 *)(r10 - 12) = 7
    a.ld_map_fd(R1, 9)                  # 7,8 r1 = map fd 9
    a.mov(R2, R10)                      # 9
    a.add(R2, -8)                       # 10
    a.call("map_lookup_elem")           # 11
    a.label("out")
    a.mov32(R0, 2)                      # 12 w0 = 2
    a.exit()                            # 13
    assert a.assemble() == _hex(
        "bf 16 0000 00000000",
        "61 67 1400 00000000",
        "15 07 0900 00000000",
        "57 07 0000 ff0f0000",
        "56 07 0700 64000000",
        "7b 7a f8ff 00000000",
        "62 0a f4ff 07000000",
        "18 11 0000 09000000", "00 00 0000 00000000",
        "bf a2 0000 00000000",
        "07 02 0000 f8ffffff",
        "85 00 0000 01000000",
        "b4 00 0000 02000000",
        "95 00 0000 00000000",
    )


def test_encoding_of_backward_jumps_imm64_atomics_byteswap_and_helpers() -> None:
    a = Asm()
    a.label("top")
    a.mov(R0, 0)                               # 0
    a.ja("top")                                # 1  off -2
    a.jmp("jgt", R2, R3, "top")                # 2  off -3, register source
    a.ld_imm64(R3, 0x1122334455667788)         # 3,4
    a.ld_imm64(R3, -1)                         # 5,6
    a.atomic_add("dw", R0, 8, R1)              # 7  lock *(u64 *)(r0 + 8) += r1
    a.be(R1, 16)                               # 8  r1 = htons(r1)
    a.call("redirect_peer")                    # 9
    a.call("skb_vlan_push")                    # 10
    a.alu32("rsh", R1, R2)                     # 11 w1 >>= w2
    a.exit()                                   # 12
    code = a.assemble()
    assert code == _hex(
        "b7 00 0000 00000000",
        "05 00 feff 00000000",
        "2d 32 fdff 00000000",
        "18 03 0000 88776655", "00 00 0000 44332211",
        "18 03 0000 ffffffff", "00 00 0000 ffffffff",
        "db 10 0800 00000000",
        "dc 01 0000 10000000",
        "85 00 0000 9b000000",
        "85 00 0000 12000000",
        "7c 21 0000 00000000",
        "95 00 0000 00000000",
    )
    assert decode(code)[2] == (0x2D, 2, 3, -3, 0)


def test_assembler_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(AsmError, match="undefined label"):
        Asm().ja("nowhere").assemble()
    with pytest.raises(AsmError, match="twice"):
        Asm().label("x").label("x")
    with pytest.raises(AsmError, match="size"):
        Asm().ldx("q", R1, R2, 0)  # type: ignore[arg-type]
    with pytest.raises(AsmError, match="not a register"):
        Asm().ldx("w", 1, R2, 0)  # type: ignore[arg-type]
    with pytest.raises(AsmError, match="helper"):
        Asm().call("no_such_helper")
    with pytest.raises(AsmError, match="32 bits"):
        Asm().mov(R1, 1 << 33).assemble()


@needs_bpf
def test_helper_ids_are_the_ones_the_kernel_names() -> None:
    """The verifier's log prints each call as `call bpf_NAME#ID`: every id in HELPERS is
    the kernel's own (the load itself may be refused for the dummy arguments)."""
    for name, ident in HELPERS.items():
        prog = Asm().mov(R2, 0).mov(R3, 0).mov(R4, 0).mov(R5, 0).call(name)
        _, log = bpf.verifier_log(prog.ret(TC_ACT_OK), log_level=2)
        assert f"bpf_{name}#{ident}" in log, (name, log[-400:])


# --- maps ----------------------------------------------------------------------------


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


@needs_bpf
def test_hash_map_update_lookup_delete_iterate_and_errors() -> None:
    with bpf.create_map(bpf.MapType.HASH, 4, 8, 64, name="pnt_hash") as m:
        for i in range(10):
            m.update(_u32(i), _u64(i * 1000))
        assert m.lookup(_u32(7)) == _u64(7000)
        assert m.lookup(_u32(99)) is None
        assert sorted(m.keys()) == sorted(_u32(i) for i in range(10))
        assert dict(m.items())[_u32(3)] == _u64(3000)
        m.update(_u32(3), _u64(1), bpf.EXIST)
        assert m.lookup(_u32(3)) == _u64(1)
        with pytest.raises(PodnetError) as err:
            m.update(_u32(3), _u64(2), bpf.NOEXIST)
        assert err.value.code == KERNEL_FAILURE
        assert "map_update_elem" in err.value.msg and "EEXIST" in err.value.details
        assert m.delete(_u32(3)) is True
        assert m.delete(_u32(3)) is False
        assert len(list(m.keys())) == 9
        with pytest.raises(PodnetError, match="key must be 4 bytes"):
            m.lookup(b"\0")
        info = bpf.map_info(m.fd)
        assert (info.type, info.key_size, info.value_size, info.max_entries, info.name) == \
            (bpf.MapType.HASH, 4, 8, 64, "pnt_hash")
        with bpf.Map.from_id(info.id) as again:   # another fd onto the same map
            assert again.fd != m.fd and again.lookup(_u32(7)) == _u64(7000)
            again.update(_u32(50), _u64(5))
        assert m.lookup(_u32(50)) == _u64(5)
    with pytest.raises(PodnetError) as err:
        bpf.create_map(bpf.MapType.HASH, 0, 8, 1)
    assert "map_create" in err.value.msg and "EINVAL" in err.value.details


@needs_bpf
def test_array_map_has_every_index_and_refuses_beyond() -> None:
    with bpf.create_map(bpf.MapType.ARRAY, 4, 4, 8, name="pnt_array") as m:
        assert m.lookup(_u32(5)) == _u32(0)
        m.update(_u32(5), _u32(77))
        assert m.lookup(_u32(5)) == _u32(77)
        assert list(m.keys()) == [_u32(i) for i in range(8)]
        assert m.lookup(_u32(8)) is None
        with pytest.raises(PodnetError, match="map_update_elem"):
            m.update(_u32(8), _u32(1))


@needs_bpf
def test_lpm_trie_longest_prefix_wins() -> None:
    with bpf.create_map(bpf.MapType.LPM_TRIE, 8, 4, 16, name="pnt_lpm") as m:
        m.update(bpf.lpm_key(8, socket.inet_aton("10.0.0.0")), _u32(1))
        m.update(bpf.lpm_key(16, socket.inet_aton("10.1.0.0")), _u32(2))
        m.update(bpf.lpm_key(24, socket.inet_aton("10.1.2.0")), _u32(3))
        assert m.lookup(bpf.lpm_key(32, socket.inet_aton("10.1.2.9"))) == _u32(3)
        assert m.lookup(bpf.lpm_key(32, socket.inet_aton("10.1.9.9"))) == _u32(2)
        assert m.lookup(bpf.lpm_key(32, socket.inet_aton("10.200.0.1"))) == _u32(1)
        assert m.lookup(bpf.lpm_key(32, socket.inet_aton("11.0.0.1"))) is None
        assert len(list(m.keys())) == 3
        assert m.delete(bpf.lpm_key(24, socket.inet_aton("10.1.2.0")))
        assert m.lookup(bpf.lpm_key(32, socket.inet_aton("10.1.2.9"))) == _u32(2)


@needs_bpf
def test_percpu_array_holds_one_value_per_cpu() -> None:
    cpus = bpf.possible_cpus()
    with bpf.create_map(bpf.MapType.PERCPU_ARRAY, 4, 8, 2, name="pnt_pcpu") as m:
        assert m.lookup_percpu(_u32(0)) == [_u64(0)] * cpus
        m.update(_u32(1), _u64(9))                         # the same value on every CPU
        assert m.lookup_percpu(_u32(1)) == [_u64(9)] * cpus
        m.update(_u32(0), b"".join(_u64(c + 1) for c in range(cpus)))
        assert m.lookup_percpu(_u32(0)) == [_u64(c + 1) for c in range(cpus)]
        assert len(list(m.items())) == 2


# --- programs, the verifier, probes ---------------------------------------------------


@needs_bpf
def test_verifier_log_is_in_the_error_for_a_bad_program() -> None:
    a = Asm()
    a.ldx("w", R2, R1, SKB["data"])
    a.ldx("b", R0, R2, 0)          # packet read without a bounds check against data_end
    a.exit()
    with pytest.raises(PodnetError) as err:
        bpf.load_program(a, name="pnt_bad")
    assert err.value.code == KERNEL_FAILURE
    assert "prog_load (pnt_bad" in err.value.msg
    assert "EACCES" in err.value.details and "verifier log" in err.value.details
    assert "invalid access to packet" in err.value.details
    with pytest.raises(PodnetError, match="prog_load") as err:
        bpf.load_program(Asm().exit())   # r0 never set
    assert "R0 !read_ok" in err.value.details


@needs_bpf
def test_probes_find_the_redirect_helpers_and_name_what_is_refused() -> None:
    for helper in ("redirect", "redirect_neigh", "redirect_peer", "skb_vlan_push",
                   "skb_vlan_pop"):
        assert bpf.probe_helper(helper), helper
    refused = bpf.probe_helper("redirect", bpf.ProgType.SOCKET_FILTER)
    assert not refused and "bpf_redirect#23" in refused.reason
    assert bpf.can_load()
    with pytest.raises(PodnetError, match="unknown helper"):
        bpf.probe_helper("teleport")


@needs_bpf
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_probes_carry_the_kernels_refusal_for_an_unprivileged_process() -> None:
    """A process without CAP_BPF is refused by the kernel itself: the probes say so in
    the kernel's words and loads fail as PodnetError naming the operation."""
    script = ("import json\nfrom podnet.kernel import bpf\nfrom podnet.errors import PodnetError\n"
              "out = {'load': bpf.can_load().reason, 'peer': bpf.probe_helper('redirect_peer')"
              ".reason, 'ok': bool(bpf.can_load())}\n"
              "try:\n    bpf.create_map(bpf.MapType.HASH, 4, 4, 1)\n"
              "except PodnetError as exc:\n    out['map'] = [exc.code, str(exc)]\n"
              "print(json.dumps(out))\n")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is False
    assert out["load"] == out["peer"] == "EPERM: Operation not permitted"
    assert out["map"][0] == KERNEL_FAILURE and "map_create" in out["map"][1]


# --- tc attach -----------------------------------------------------------------------


def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    sh(None, f"ip link add {name_a} netns {ns_a} type veth peer name {name_b} netns {ns_b}")
    sh(ns_a, f"ip link set {name_a} up")
    sh(ns_b, f"ip link set {name_b} up")


def _ifindex(ns: str, name: str) -> int:
    return json.loads(sh(ns, f"ip -j link show {name}"))[0]["ifindex"]


def _mac(ns: str, name: str) -> bytes:
    return bytes.fromhex(json.loads(sh(ns, f"ip -j link show {name}"))[0]["address"]
                         .replace(":", ""))


def _gone(prog_id: int) -> bool:
    try:
        bpf.Program.from_id(prog_id).close()
    except PodnetError:
        return True
    return False


@needs_bpf
def test_attach_dump_adopt_replace_detach_in_a_namespace(ns: Namespaces) -> None:
    host = ns.add("h")
    _veth(host, "pa", host, "pb")
    idx = _ifindex(host, "pa")
    counter = bpf.create_map(bpf.MapType.PERCPU_ARRAY, 4, 8, 1, name="pnt_cnt")
    prog = bpf.load_program(Asm().count(counter.fd, 0).ret(TC_ACT_OK), name="pnt_count")
    other = bpf.load_program(Asm().ret(TC_ACT_OK), name="pnt_other")
    try:
        prog_id, other_id = prog.id, other.id
        with netns.iproute(host) as ipr:
            tc.ensure_clsact(ipr, idx)
            tc.ensure_clsact(ipr, idx)                         # idempotent
            f = tc.attach(ipr, idx, "ingress", prog.fd, name="pnt_count")
            assert (f.prog_id, f.name, f.direct_action, f.prio) == (prog_id, "pnt_count",
                                                                     True, 1)
            assert f.tag == prog.info().tag
            tc.attach(ipr, idx, "ingress", prog.fd, name="pnt_count")   # again: one filter
            assert tc.program_ids(ipr, idx) == {"ingress": [prog_id], "egress": []}
            # the kernel's own view, from iproute2
            shown = sh(host, "tc filter show dev pa ingress")
            assert f"id {prog_id} " in shown and "direct-action" in shown

            # a restarted agent: our fds gone, the filter keeps the program alive
            prog.close()
            adopted_id = tc.filters(ipr, idx, "ingress")[0].prog_id
            with bpf.Program.from_id(adopted_id) as adopted:
                assert adopted.info().name == "pnt_count"
                (map_id,) = adopted.map_ids()
            with bpf.Map.from_id(map_id) as cnt, capture(host, "pb") as pb:
                pb.send(b"\xff" * 6 + _mac(host, "pb") + b"\x88\xb5" + b"podnet" * 10)
                assert wait_until(lambda: sum(
                    struct.unpack("<Q", v)[0] for v in cnt.lookup_percpu(_u32(0)) or []) > 0)

            # replace in place with another program, at the other hook too
            tc.attach(ipr, idx, "ingress", other.fd, name="pnt_other")
            tc.attach(ipr, idx, "egress", other.fd, name="pnt_other")
            assert tc.program_ids(ipr, idx) == {"ingress": [other_id], "egress": [other_id]}
            assert wait_until(lambda: _gone(prog_id))        # nothing held the old one

            assert tc.detach(ipr, idx, "ingress") is True
            assert tc.detach(ipr, idx, "ingress") is False   # absent: fine
            assert tc.program_ids(ipr, idx)["ingress"] == []
            assert tc.remove_clsact(ipr, idx) is True
            assert tc.remove_clsact(ipr, idx) is False
            assert not tc.clsact_present(ipr, idx)
            assert tc.filters(ipr, idx, "egress") == []
            assert tc.detach(ipr, idx, "egress") is False
            assert "clsact" not in sh(host, "tc qdisc show dev pa")
            with pytest.raises(PodnetError) as err:
                tc.attach(ipr, 99999, "egress", other.fd)
            assert err.value.code == KERNEL_FAILURE and "ifindex 99999" in err.value.msg
            with pytest.raises(PodnetError, match="ingress or egress"):
                tc.attach(ipr, idx, "sideways", other.fd)  # type: ignore[arg-type]
            # a plain ingress qdisc has no egress hook: refused, not silently misplaced
            sh(host, "tc qdisc add dev pb ingress")
            with pytest.raises(PodnetError, match="'ingress' qdisc where clsact is needed"):
                tc.attach(ipr, _ifindex(host, "pb"), "egress", other.fd)
            assert tc.filters(ipr, _ifindex(host, "pb"), "egress") == []
    finally:
        prog.close()
        other.close()
        counter.close()
    assert wait_until(lambda: _gone(other_id))        # detached and closed: freed
    with pytest.raises(PodnetError) as err:
        bpf.Program.from_id(other_id)
    assert err.value.code == KERNEL_FAILURE
    assert f"prog_get_fd_by_id {other_id}" in err.value.msg and "ENOENT" in err.value.details


# --- VLAN tagging end to end ----------------------------------------------------------

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
PACKET_OUTGOING = 4


@dataclass
class Frame:
    vid: int | None       # the 802.1Q VID, from auxdata (skb metadata) or the frame bytes
    tpid: int | None
    ethertype: int        # after any tag
    l3: bytes
    outgoing: bool
    src: bytes            # source MAC

    def icmp(self) -> tuple[int, int, int] | None:
        """(type, id, seq) of an IPv4 ICMP echo, else None."""
        if self.ethertype != 0x0800 or len(self.l3) < 28 or self.l3[9] != 1:
            return None
        ihl = (self.l3[0] & 0xF) * 4
        typ, _, _, ident, seq = struct.unpack_from("!BBHHH", self.l3, ihl)
        return typ, ident, seq


class Capture:
    """AF_PACKET capture on one device of a namespace, tags included (as tcpdump -e)."""

    def __init__(self, ns_name: str, ifname: str) -> None:
        self.sock = netns.socket_in(ns_name, socket.AF_PACKET, socket.SOCK_RAW,
                                    socket.htons(ETH_P_ALL))
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.setblocking(False)
        self.frames: list[Frame] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def _read(self) -> None:
        while True:
            try:
                data, anc, _, addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(20))
            except BlockingIOError:
                return
            vid = tpid = None
            for level, kind, raw in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(raw) >= 20:
                    status, _, _, _, _, tci, tp = struct.unpack_from("<IIIHHHH", raw)
                    if status & TP_STATUS_VLAN_VALID:
                        vid = tci & 0xFFF
                        tpid = tp if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
            ethertype = struct.unpack_from("!H", data, 12)[0]
            l3 = data[14:]
            if vid is None and ethertype in (0x8100, 0x88A8):   # tag written in the frame
                tpid, tci, ethertype = ethertype, *struct.unpack_from("!HH", data, 14)
                vid, l3 = tci & 0xFFF, data[18:]
            self.frames.append(Frame(vid, tpid, ethertype, l3, addr[2] == PACKET_OUTGOING,
                                     data[6:12]))

    def wait_for(self, predicate: Callable[[list[Frame]], bool], timeout: float = 5) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            if predicate(self.frames):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.sock], [], [], min(left, 0.2))


@contextmanager
def capture(ns_name: str, ifname: str) -> Iterator[Capture]:
    cap = Capture(ns_name, ifname)
    try:
        yield cap
    finally:
        cap.close()


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(dst_mac: bytes, src_mac: bytes, src: str, dst: str, vid: int, ident: int
                 ) -> bytes:
    """An Ethernet frame with an 802.1Q tag in its bytes carrying an ICMP echo request."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"podnet-vlan-test"
    icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return dst_mac + src_mac + struct.pack("!HHH", 0x8100, vid, 0x0800) + ip + icmp


def _echo_seen(frames: list[Frame], typ: int, ident: int, vid: int) -> bool:
    return any(f.icmp() is not None and f.icmp()[:2] == (typ, ident) and f.vid == vid  # type: ignore[index]
               for f in frames)


def _untagged_counter(counter: bpf.Map) -> Asm:
    """Counts frames that reach it without a VLAN tag, and lets them through."""
    a = Asm()
    a.mov(R6, R1)
    a.ldx("w", R7, R6, SKB["vlan_present"])
    a.jmp("jne", R7, 0, "out")
    a.count(counter.fd, 0)
    a.label("out")
    return a.ret(TC_ACT_OK)


def _total(m: bpf.Map, index: int = 0) -> int:
    return sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(_u32(index)) or [])


@needs_bpf
def test_vlan_tagging_between_two_namespaces_over_a_wire(ns: Namespaces) -> None:
    """a:eth0 -- [wire: wa  br0  wb] -- b:eth0. Each end is an access port of VLAN 100
    (tag on egress, pop only VID 100 on ingress); the wire, a plain bridge without VLAN
    awareness, sees tagged frames only."""
    a, b, wire = ns.add("a"), ns.add("b"), ns.add("w")
    _veth(a, "eth0", wire, "wa")
    _veth(b, "eth0", wire, "wb")
    sh(wire, "ip link add br0 type bridge && ip link set wa master br0 && "
             "ip link set wb master br0 && ip link set br0 up")
    sh(a, "ip addr add 10.77.0.1/24 dev eth0")
    sh(b, "ip addr add 10.77.0.2/24 dev eth0")
    stats = {a: bpf_vlan.create_stats_map(), b: bpf_vlan.create_stats_map()}
    untagged = bpf.create_map(bpf.MapType.PERCPU_ARRAY, 4, 8, 1, name="pnt_untagged")
    after = bpf.load_program(_untagged_counter(untagged), name="pnt_after")
    try:
        for side in (a, b):
            with netns.iproute(side) as ipr:
                idx = ipr.link_lookup(ifname="eth0")[0]
                assert bpf_vlan.ensure_access_port(ipr, idx, 100, stats=stats[side])
                ids = tc.program_ids(ipr, idx)
                assert not bpf_vlan.ensure_access_port(ipr, idx, 100, stats=stats[side])
                assert tc.program_ids(ipr, idx) == ids          # nothing replaced
                assert bpf_vlan.attached(ipr, idx) == {
                    "egress": f"pn_vlan_push vid=100 stats={stats[side].id}",
                    "ingress": f"pn_vlan_pop vid=100 stats={stats[side].id}"}
        with netns.iproute(b) as ipr:   # a later filter on b's ingress sees frames untagged
            tc.attach(ipr, ipr.link_lookup(ifname="eth0")[0], "ingress", after.fd,
                      name="pnt_after", prio=20)

        a_mac, b_mac = _mac(a, "eth0"), _mac(b, "eth0")
        with capture(wire, "wa") as cap:
            out = sh(a, "ping -c 3 -i 0.2 -W 2 10.77.0.2")
            assert " 0% packet loss" in out, out
            assert cap.wait_for(lambda fs: sum(1 for f in fs if f.icmp() and f.icmp()[0] == 0)
                                >= 3)
            icmp = [f for f in cap.frames if f.icmp() is not None]
            assert {f.icmp()[0] for f in icmp} == {0, 8}  # type: ignore[index]
            assert all(f.vid == 100 and f.tpid == 0x8100 for f in icmp), icmp
            # every frame a or b sent, ARP and IPv6 included, crossed the wire tagged
            # (the wire's own bridge sends untagged IGMP reports of its own)
            sent = [f for f in cap.frames if f.src in (a_mac, b_mac)]
            assert {f.src for f in sent} == {a_mac, b_mac}
            assert all(f.vid == 100 for f in sent), [f for f in sent if f.vid != 100]
        for side in (a, b):
            counts = bpf_vlan.read_stats(stats[side])
            assert counts["passed"] >= 6 and counts["errors"] == 0, counts
        assert _total(untagged) >= 3     # the echo requests, after the pop, at prio 20

        # frames injected on the wire towards b: VID 100 answered, VID 200 dropped by b
        before = bpf_vlan.read_stats(stats[b])
        with capture(wire, "wb") as cap:
            cap.send(echo_request(b_mac, a_mac, "10.77.0.1", "10.77.0.2", 100, 0x1100))
            assert cap.wait_for(lambda fs: _echo_seen(fs, 0, 0x1100, 100)), cap.frames
            cap.send(echo_request(b_mac, a_mac, "10.77.0.1", "10.77.0.2", 200, 0x1200))
            assert wait_until(lambda: bpf_vlan.read_stats(stats[b])["dropped_vid"]
                              > before["dropped_vid"])
            plain = echo_request(b_mac, a_mac, "10.77.0.1", "10.77.0.2", 100, 0x1300)
            cap.send(plain[:12] + plain[16:])      # the same request without a tag
            assert wait_until(lambda: bpf_vlan.read_stats(stats[b])["dropped_untagged"]
                              > before["dropped_untagged"])
            # a reply to the dropped requests would be on the wire by the time the
            # tagged control below has been answered
            cap.send(echo_request(b_mac, a_mac, "10.77.0.1", "10.77.0.2", 100, 0x1400))
            assert cap.wait_for(lambda fs: _echo_seen(fs, 0, 0x1400, 100))
            replies = {f.icmp()[1] for f in cap.frames if f.icmp() and f.icmp()[0] == 0}
            assert 0x1200 not in replies and 0x1300 not in replies

        # another VID replaces the programs in place; a now drops b's VLAN 100 replies
        with netns.iproute(a) as ipr:
            idx = ipr.link_lookup(ifname="eth0")[0]
            assert bpf_vlan.ensure_access_port(ipr, idx, 200)
            assert bpf_vlan.attached(ipr, idx)["ingress"] == "pn_vlan_pop vid=200"
            assert len(tc.filters(ipr, idx, "ingress")) == 1
        assert " 0% packet loss" not in sh(a, "ping -c 1 -W 1 10.77.0.2", check=False)
        for side in (a, b):
            with netns.iproute(side) as ipr:
                idx = ipr.link_lookup(ifname="eth0")[0]
                assert bpf_vlan.remove(ipr, idx)
                assert not bpf_vlan.remove(ipr, idx)
                assert bpf_vlan.attached(ipr, idx) == {}
                tc.remove_clsact(ipr, idx)
        out = sh(a, "ping -c 1 -W 2 10.77.0.2")           # untagged again, both ends
        assert " 0% packet loss" in out
    finally:
        after.close()
        untagged.close()
        for m in stats.values():
            m.close()


@needs_bpf
def test_vlan_trunk_and_children_emulate_vlan_devices(ns: Namespaces) -> None:
    """A trunk (vm:eth0 -- host:trunk) carrying VLANs 10 and 20. In the host each VLAN's
    child is a veth pair (v10p -- n10:eth0): the trunk program hands VID 10 frames,
    untagged, out of v10p (so they arrive in n10), and v10p's child program tags what n10
    sends with 10 and sends it out of the trunk. The VM does the same on its side."""
    vm, host, n10, n20 = ns.add("vm"), ns.add("host"), ns.add("n10"), ns.add("n20")
    _veth(vm, "eth0", host, "trunk")
    _veth(host, "v10p", n10, "eth0")
    _veth(host, "v20p", n20, "eth0")
    sh(n10, "ip addr add 10.81.10.2/24 dev eth0")
    sh(n20, "ip addr add 10.81.20.2/24 dev eth0")
    # n20 also holds an address of VLAN 10's subnet: only VLAN separation keeps n10 away
    sh(n20, "ip addr add 10.81.10.3/24 dev eth0")
    sh(vm, "ip link add vm10 type veth peer name vm10p && ip link add vm20 type veth "
           "peer name vm20p && ip link set vm10 up && ip link set vm10p up && "
           "ip link set vm20 up && ip link set vm20p up && "
           "ip addr add 10.81.10.1/24 dev vm10 && ip addr add 10.81.20.1/24 dev vm20")
    vids, vm_vids = bpf_vlan.create_vid_map(), bpf_vlan.create_vid_map("pn_vm_vids")
    st = bpf_vlan.create_stats_map()
    try:
        for space, trunk_name, vid_map, children, stats in (
                (host, "trunk", vids, {10: "v10p", 20: "v20p"}, st),
                (vm, "eth0", vm_vids, {10: "vm10p", 20: "vm20p"}, None)):
            with netns.iproute(space) as ipr:
                trunk = ipr.link_lookup(ifname=trunk_name)[0]
                assert bpf_vlan.ensure_trunk(ipr, trunk, vid_map, stats=stats)
                assert not bpf_vlan.ensure_trunk(ipr, trunk, vid_map, stats=stats)
                for vid, dev in children.items():
                    idx = ipr.link_lookup(ifname=dev)[0]
                    bpf_vlan.set_vid_target(vid_map, vid, idx)
                    assert bpf_vlan.ensure_vlan_child(ipr, idx, vid, trunk, stats=stats)
                    assert not bpf_vlan.ensure_vlan_child(ipr, idx, vid, trunk, stats=stats)
        vids.close()          # the trunk's filter keeps the map; a restart re-opens it:
        with netns.iproute(host) as ipr:
            vids = bpf_vlan.trunk_vid_map(ipr, ipr.link_lookup(ifname="trunk")[0])
            assert vids is not None and vids.max_entries == bpf_vlan.VID_MAP_ENTRIES

        with capture(host, "trunk") as cap:
            for addr in ("10.81.10.2", "10.81.20.2"):
                out = sh(vm, f"ping -c 2 -i 0.2 -W 2 {addr}")
                assert " 0% packet loss" in out, out
            assert cap.wait_for(lambda fs: {f.vid for f in fs if f.icmp()} >= {10, 20})
            assert {f.vid for f in cap.frames if f.icmp()} == {10, 20}, cap.frames
        # VLANs stay apart: n10's ARP for 10.81.10.3 never reaches n20 on VLAN 20
        out = sh(n10, "ping -c 1 -W 1 10.81.10.3", check=False)
        assert " 0% packet loss" not in out
        assert " 0% packet loss" in sh(n20, "ping -c 1 -W 1 10.81.20.1")
        # a VLAN without a device is dropped at the trunk, not delivered untagged
        bpf_vlan.clear_vid_target(vids, 20)
        before = bpf_vlan.read_stats(st)["dropped_vid"]
        out = sh(vm, "ping -c 1 -W 1 10.81.20.2", check=False)
        assert " 0% packet loss" not in out
        assert bpf_vlan.read_stats(st)["dropped_vid"] > before
        with netns.iproute(host) as ipr:
            for dev in ("trunk", "v10p", "v20p"):
                assert bpf_vlan.remove(ipr, ipr.link_lookup(ifname=dev)[0])
    finally:
        if vids is not None:
            vids.close()
        vm_vids.close()
        st.close()


def test_vlan_programs_refuse_bad_parameters() -> None:
    for bad in (0, 4095, -1, True, "100"):
        with pytest.raises(PodnetError) as err:
            bpf_vlan.push_program(bad)  # type: ignore[arg-type]
        assert err.value.code == INVALID_CONFIG
    with pytest.raises(PodnetError, match="PCP"):
        bpf_vlan.push_program(100, pcp=8)
    with pytest.raises(PodnetError, match="protocol"):
        bpf_vlan.pop_program(100, proto=0x0800)
    with pytest.raises(PodnetError, match="trunk ifindex"):
        bpf_vlan.mux_program(100, 0)


# --- redirect_peer: two pods without a bridge -----------------------------------------


def peer_redirect_program(peers: bpf.Map, counter: bpf.Map) -> Asm:
    """Ingress of a pod's host veth: peers[skb->ifindex] names the host veth of the
    destination pod; hand the frame to that veth's peer (inside the pod) directly."""
    a = Asm()
    a.mov(R6, R1)
    a.ldx("w", R7, R6, SKB["ifindex"])
    a.stx("w", R10, -8, R7)
    a.mov(R2, R10).add(R2, -8)
    a.ld_map_fd(R1, peers.fd)
    a.call("map_lookup_elem")
    a.jmp("jeq", R0, 0, "pass")
    a.ldx("w", R7, R0, 0)
    a.count(counter.fd, 0)
    a.mov(R1, R7).mov(R2, 0)
    a.call("redirect_peer")
    a.exit()
    a.label("pass")
    return a.ret(TC_ACT_OK)


@needs_bpf
@pytest.mark.skipif(not bpf.probe_helper("redirect_peer"),
                    reason=f"{bpf.probe_helper('redirect_peer').reason}")
def test_redirect_peer_joins_two_pods_without_a_bridge(ns: Namespaces) -> None:
    host, pa, pb = ns.add("host"), ns.add("pa"), ns.add("pb")
    _veth(host, "ha", pa, "eth0")
    _veth(host, "hb", pb, "eth0")
    sh(pa, "ip addr add 10.78.0.1/24 dev eth0")
    sh(pb, "ip addr add 10.78.0.2/24 dev eth0")
    # no bridge, no address or route in the host: without the program there is no path
    out = sh(pa, "ping -c 1 -W 1 10.78.0.2", check=False)
    assert " 0% packet loss" not in out
    peers = bpf.create_map(bpf.MapType.HASH, 4, 4, 16, name="pnt_peers")
    counter = bpf.create_map(bpf.MapType.PERCPU_ARRAY, 4, 8, 1, name="pnt_redirects")
    prog = bpf.load_program(peer_redirect_program(peers, counter), name="pnt_peer")
    prog_id = prog.id
    try:
        with netns.iproute(host) as ipr:
            ha, hb = ipr.link_lookup(ifname="ha")[0], ipr.link_lookup(ifname="hb")[0]
            peers.update(_u32(ha), _u32(hb))
            peers.update(_u32(hb), _u32(ha))
            for idx in (ha, hb):
                tc.attach(ipr, idx, "ingress", prog.fd, name="pnt_peer")
            out = sh(pa, "ping -c 5 -i 0.2 -W 2 10.78.0.2")
            assert " 0% packet loss" in out, out
            redirected = sum(struct.unpack("<Q", v)[0]
                             for v in counter.lookup_percpu(_u32(0)) or [])
            assert redirected >= 10, redirected      # 5 requests + 5 replies, ARP besides
            assert sh(host, "ip -4 route show").strip() == ""   # the host routes nothing
            assert sh(host, "ip -4 addr show dev ha; ip -4 addr show dev hb").strip() == ""
            for idx in (ha, hb):
                assert tc.detach(ipr, idx, "ingress")
        out = sh(pa, "ping -c 1 -W 1 10.78.0.2", check=False)
        assert " 0% packet loss" not in out             # detached: the path is gone again
    finally:
        prog.close()
        peers.close()
        counter.close()
    assert wait_until(lambda: _gone(prog_id))
