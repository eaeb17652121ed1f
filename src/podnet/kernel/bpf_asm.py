"""A small eBPF assembler: podnet writes its tc programs in Python, no compiler at run time.

Why: the machines podnet runs on have no clang, no libbpf and no bpffs; the kernel takes
plain bytecode through bpf(2) (see kernel/bpf.py). The programs podnet needs are a few
dozen instructions each, so a builder with symbolic labels is enough and keeps every
instruction visible in review.

Encoding (include/uapi/linux/bpf.h, `struct bpf_insn`): every instruction is 8 bytes,
little endian, `struct.pack('<BBhi', code, src << 4 | dst, off, imm)`:

    code  8 bits   operation | source (K: imm, X: register) | class
    regs  8 bits   dst register in the low nibble, src register in the high nibble
    off  16 bits   signed: memory offset, or jump distance in instructions
    imm  32 bits   signed immediate

Classes: LD 0x00, LDX 0x01, ST 0x02, STX 0x03, ALU 0x04 (32-bit), JMP 0x05, JMP32 0x06
(32-bit compares), ALU64 0x07. Sizes for memory ops: W 0x00 (4), H 0x08 (2), B 0x10 (1),
DW 0x18 (8); mode MEM 0x60, ATOMIC 0xc0. ALU ops: add 0x00 sub 0x10 mul 0x20 div 0x30
or 0x40 and 0x50 lsh 0x60 rsh 0x70 neg 0x80 mod 0x90 xor 0xa0 mov 0xb0 arsh 0xc0 end 0xd0.
Jump ops: ja 0x00 jeq 0x10 jgt 0x20 jge 0x30 jset 0x40 jne 0x50 jsgt 0x60 jsge 0x70
call 0x80 exit 0x90 jlt 0xa0 jle 0xb0 jslt 0xc0 jsle 0xd0 (gt/ge/lt/le unsigned, s* signed).
A jump's `off` counts instructions from the one after the jump: target - (pc + 1).
`ld_imm64` is the only 16-byte instruction (code 0x18, then a second slot with code 0
carrying the upper 32 bits); with src_reg 1 (BPF_PSEUDO_MAP_FD) its imm is a map fd that
the kernel replaces with the map's address. A call's imm is the helper id (below).

Registers: r0 return value (of helpers and of the program), r1-r5 arguments (clobbered by
every call), r6-r9 callee-saved, r10 the read-only frame pointer (stack: 512 bytes below
it, addressed with negative offsets). A tc program starts with r1 = struct __sk_buff *.

Helper ids used by podnet (the kernel's verifier log names them, e.g. `bpf_redirect#23`,
which the tests check): map_lookup_elem 1, map_update_elem 2, map_delete_elem 3,
ktime_get_ns 5, get_smp_processor_id 8, skb_store_bytes 9, l3_csum_replace 10,
l4_csum_replace 11, tail_call 12, clone_redirect 13, skb_vlan_push 18, skb_vlan_pop 19,
redirect 23, skb_load_bytes 26, csum_diff 28, skb_change_type 32, get_hash_recalc 34,
skb_pull_data 39, redirect_map 51, fib_lookup 69, redirect_neigh 152, redirect_peer 155.

Rules the verifier enforces (a program breaking one is refused at load, with the log):
- Every path ends in `exit` with r0 set to a scalar (a tc verdict: UNSPEC -1, OK 0, SHOT 2,
  REDIRECT 7 — what bpf_redirect* return); no unreachable instructions, no back-edges
  except bounded loops; at most 1M verified instructions.
- Registers are read only after being written; r1-r5 are unreadable after a call until
  set again. r10 is never written.
- Stack slots are written before they are read (a key or value passed to a helper must be
  fully initialised), and stay within [r10 - 512, r10).
- Packet access (tc: skb->data at offset 76, data_end at 80 of __sk_buff) only after a
  bounds check: compute `reg = data + N`, `if reg > data_end goto out`, then bytes
  [data, data + N) may be read or written. Helpers that change the packet (vlan push/pop,
  store_bytes, change_*) invalidate every packet pointer: reload data/data_end after them.
- A map_lookup_elem result is a pointer or NULL: compare it with 0 before dereferencing,
  and access only within value_size.
- __sk_buff fields are read with their own size at their own offset (the kernel rewrites
  the access); only a few (mark, priority, tc_index, cb[], tc_classid) may be written.
- Helper arguments must have the types the helper declares (ctx in r1 for skb helpers,
  a map pointer from ld_map_fd, initialised stack pointers with constant sizes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum


class Reg(IntEnum):
    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = tuple(Reg)
FP = R10

# instruction classes
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
# memory sizes and modes
SIZES = {"w": 0x00, "h": 0x08, "b": 0x10, "dw": 0x18}
IMM, MEM, ATOMIC = 0x00, 0x60, 0xC0
# operand source
K, X = 0x00, 0x08
ALU_OPS = {
    "add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50,
    "lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xA0, "mov": 0xB0,
    "arsh": 0xC0,
}
END = 0xD0
TO_LE, TO_BE = 0x00, 0x08
JMP_OPS = {
    "ja": 0x00, "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50,
    "jsgt": 0x60, "jsge": 0x70, "jlt": 0xA0, "jle": 0xB0, "jslt": 0xC0, "jsle": 0xD0,
}
CALL, EXIT = 0x80, 0x90
PSEUDO_MAP_FD = 1

HELPERS: dict[str, int] = {
    "map_lookup_elem": 1,
    "map_update_elem": 2,
    "map_delete_elem": 3,
    "ktime_get_ns": 5,
    "get_smp_processor_id": 8,
    "skb_store_bytes": 9,
    "l3_csum_replace": 10,
    "l4_csum_replace": 11,
    "tail_call": 12,
    "clone_redirect": 13,
    "skb_vlan_push": 18,
    "skb_vlan_pop": 19,
    "redirect": 23,
    "skb_load_bytes": 26,
    "csum_diff": 28,
    "skb_change_type": 32,
    "get_hash_recalc": 34,
    "skb_pull_data": 39,
    "redirect_map": 51,
    "fib_lookup": 69,
    "redirect_neigh": 152,
    "redirect_peer": 155,
}

# tc verdicts (include/uapi/linux/pkt_cls.h). UNSPEC lets the next filter (higher prio
# number) run and passes the packet when none is left; OK passes it at once.
TC_ACT_UNSPEC = -1
TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7

# struct __sk_buff field offsets (include/uapi/linux/bpf.h)
SKB = {
    "len": 0, "pkt_type": 4, "mark": 8, "queue_mapping": 12, "protocol": 16,
    "vlan_present": 20, "vlan_tci": 24, "vlan_proto": 28, "priority": 32,
    "ingress_ifindex": 36, "ifindex": 40, "tc_index": 44, "cb0": 48, "hash": 68,
    "tc_classid": 72, "data": 76, "data_end": 80,
}

BPF_F_INGRESS = 1


class AsmError(ValueError):
    """A program that cannot be encoded (unknown label, operand out of range)."""


def encode(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One 8-byte instruction."""
    if not -0x8000 <= off <= 0x7FFF:
        raise AsmError(f"offset {off} does not fit 16 bits")
    if not -0x80000000 <= imm <= 0xFFFFFFFF:
        raise AsmError(f"immediate {imm} does not fit 32 bits")
    if imm > 0x7FFFFFFF:
        imm -= 1 << 32
    return struct.pack("<BBhi", code, (src & 0xF) << 4 | (dst & 0xF), off, imm)


def decode(code: bytes) -> list[tuple[int, int, int, int, int]]:
    """(code, dst, src, off, imm) per 8-byte slot, for tests and debugging."""
    out = []
    for i in range(0, len(code), 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i)
        out.append((op, regs & 0xF, regs >> 4, off, imm))
    return out


@dataclass
class _Slot:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    label: str | None = None  # a jump target to resolve into `off`


def _size(size: str) -> int:
    try:
        return SIZES[size]
    except KeyError:
        raise AsmError(f"unknown size {size!r} (w, h, b, dw)") from None


def _reg(r: Reg) -> int:
    if not isinstance(r, Reg):
        raise AsmError(f"{r!r} is not a register (use R0..R10)")
    return int(r)


class Asm:
    """Builds one program. Operands: a `Reg` means a register, a plain int an immediate.

        a = Asm()
        a.mov(R0, TC_ACT_OK)
        a.jmp("jeq", R2, 0, "out")
        a.label("out")
        a.exit()
        code = a.assemble()
    """

    def __init__(self) -> None:
        self._slots: list[_Slot] = []
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def _emit(self, slot: _Slot) -> Asm:
        self._slots.append(slot)
        return self

    def label(self, name: str) -> Asm:
        """Mark the next instruction as `name`."""
        if name in self._labels:
            raise AsmError(f"label {name!r} defined twice")
        self._labels[name] = len(self._slots)
        return self

    # --- ALU -----------------------------------------------------------------------------
    def alu64(self, op: str, dst: Reg, src: Reg | int = 0) -> Asm:
        return self._alu(ALU64, op, dst, src)

    def alu32(self, op: str, dst: Reg, src: Reg | int = 0) -> Asm:
        return self._alu(ALU, op, dst, src)

    def _alu(self, cls: int, op: str, dst: Reg, src: Reg | int) -> Asm:
        try:
            code = ALU_OPS[op]
        except KeyError:
            raise AsmError(f"unknown ALU op {op!r}") from None
        if isinstance(src, Reg):
            return self._emit(_Slot(cls | code | X, _reg(dst), int(src)))
        return self._emit(_Slot(cls | code | K, _reg(dst), imm=src))

    def mov(self, dst: Reg, src: Reg | int) -> Asm:
        """dst = src (64 bit; an immediate is sign-extended from 32 bits)."""
        return self.alu64("mov", dst, src)

    def mov32(self, dst: Reg, src: Reg | int) -> Asm:
        """dst = (u32)src, upper half zeroed."""
        return self.alu32("mov", dst, src)

    def add(self, dst: Reg, src: Reg | int) -> Asm:
        return self.alu64("add", dst, src)

    def and_(self, dst: Reg, src: Reg | int) -> Asm:
        return self.alu64("and", dst, src)

    def be(self, dst: Reg, bits: int) -> Asm:
        """dst = host-to-big-endian of its low `bits` (16, 32, 64): htons/htonl."""
        if bits not in (16, 32, 64):
            raise AsmError("byte swap width must be 16, 32 or 64")
        return self._emit(_Slot(ALU | END | TO_BE, _reg(dst), imm=bits))

    def le(self, dst: Reg, bits: int) -> Asm:
        if bits not in (16, 32, 64):
            raise AsmError("byte swap width must be 16, 32 or 64")
        return self._emit(_Slot(ALU | END | TO_LE, _reg(dst), imm=bits))

    # --- memory --------------------------------------------------------------------------
    def ldx(self, size: str, dst: Reg, src: Reg, off: int) -> Asm:
        """dst = *(size *)(src + off)."""
        return self._emit(_Slot(LDX | _size(size) | MEM, _reg(dst), _reg(src), off))

    def stx(self, size: str, dst: Reg, off: int, src: Reg) -> Asm:
        """*(size *)(dst + off) = src."""
        return self._emit(_Slot(STX | _size(size) | MEM, _reg(dst), _reg(src), off))

    def st(self, size: str, dst: Reg, off: int, imm: int) -> Asm:
        """*(size *)(dst + off) = imm."""
        return self._emit(_Slot(ST | _size(size) | MEM, _reg(dst), off=off, imm=imm))

    def atomic_add(self, size: str, dst: Reg, off: int, src: Reg) -> Asm:
        """lock *(size *)(dst + off) += src (size w or dw)."""
        if size not in ("w", "dw"):
            raise AsmError("atomic add takes w or dw")
        return self._emit(_Slot(STX | _size(size) | ATOMIC, _reg(dst), _reg(src), off,
                                ALU_OPS["add"]))

    def ld_imm64(self, dst: Reg, value: int) -> Asm:
        """dst = a full 64-bit constant (two slots)."""
        value &= (1 << 64) - 1
        self._emit(_Slot(LD | SIZES["dw"] | IMM, _reg(dst), imm=value & 0xFFFFFFFF))
        return self._emit(_Slot(0, imm=value >> 32))

    def ld_map_fd(self, dst: Reg, map_fd: int) -> Asm:
        """dst = the map behind `map_fd` (ld_imm64 with src_reg BPF_PSEUDO_MAP_FD)."""
        self._emit(_Slot(LD | SIZES["dw"] | IMM, _reg(dst), PSEUDO_MAP_FD, imm=map_fd))
        return self._emit(_Slot(0))

    # --- jumps ---------------------------------------------------------------------------
    def jmp(self, op: str, dst: Reg, src: Reg | int, label: str) -> Asm:
        """if (dst op src) goto label, 64-bit compare."""
        return self._jump(JMP, op, dst, src, label)

    def jmp32(self, op: str, dst: Reg, src: Reg | int, label: str) -> Asm:
        """if ((u32)dst op (u32)src) goto label."""
        return self._jump(JMP32, op, dst, src, label)

    def ja(self, label: str) -> Asm:
        return self._emit(_Slot(JMP | JMP_OPS["ja"], label=label))

    def _jump(self, cls: int, op: str, dst: Reg, src: Reg | int, label: str) -> Asm:
        if op == "ja" or op not in JMP_OPS:
            raise AsmError(f"unknown conditional jump {op!r}")
        if isinstance(src, Reg):
            return self._emit(_Slot(cls | JMP_OPS[op] | X, _reg(dst), int(src), label=label))
        return self._emit(_Slot(cls | JMP_OPS[op] | K, _reg(dst), imm=src, label=label))

    def call(self, helper: str | int) -> Asm:
        """Call a helper by name (see HELPERS) or id; result in r0, r1-r5 clobbered."""
        if isinstance(helper, str):
            try:
                helper = HELPERS[helper]
            except KeyError:
                raise AsmError(f"unknown helper {helper!r}") from None
        return self._emit(_Slot(JMP | CALL, imm=helper))

    def exit(self) -> Asm:
        return self._emit(_Slot(JMP | EXIT))

    def ret(self, verdict: int) -> Asm:
        """r0 = verdict; exit."""
        return self.mov(R0, verdict).exit()

    # --- macros --------------------------------------------------------------------------
    def count(self, map_fd: int, index: int, *, stack_off: int = -4) -> Asm:
        """Add 1 to the u64 at `index` of an (ideally per-CPU) array map. Clobbers r0-r5
        and the u32 stack slot at r10 + stack_off; an index outside the map is skipped."""
        skip = f"_count{len(self._slots)}"
        self.st("w", R10, stack_off, index)
        self.mov(R2, R10).add(R2, stack_off)
        self.ld_map_fd(R1, map_fd)
        self.call("map_lookup_elem")
        self.jmp("jeq", R0, 0, skip)
        self.mov(R1, 1)
        self.atomic_add("dw", R0, 0, R1)
        return self.label(skip)

    # --- output --------------------------------------------------------------------------
    def assemble(self) -> bytes:
        """The bytecode, jump labels resolved to instruction offsets."""
        out = bytearray()
        for pc, slot in enumerate(self._slots):
            off = slot.off
            if slot.label is not None:
                if slot.label not in self._labels:
                    raise AsmError(f"jump to undefined label {slot.label!r}")
                off = self._labels[slot.label] - (pc + 1)
            out += encode(slot.code, slot.dst, slot.src, off, slot.imm)
        return bytes(out)
