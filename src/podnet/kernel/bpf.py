"""The bpf(2) system call from pure Python: maps, program loading, ids, feature probes.

Why ctypes and not libbpf: nothing is compiled or installed at run time (see bpf_asm.py).
The calls used are few and their `union bpf_attr` layouts are stable uapi, packed here
with struct at the offsets of include/uapi/linux/bpf.h.

File descriptors: bpffs is not mounted on these machines, so a map or program lives as
long as some fd (or an attached tc filter) refers to it. `Map` and `Program` own one fd
each (close() or a `with` block); a restarted process finds attached programs through
the tc filter dump (kernel/tc.py gives their ids) and re-opens them with
`Program.from_id`, then their maps with `Map.from_id(prog.map_ids()[i])`.

Every kernel failure is PodnetError(KERNEL_FAILURE) naming the operation, with the
kernel's errno text (and the verifier log for a refused program); a caller's mistake (a
key of the wrong size) is PodnetError(INTERNAL). Lookups of absent keys return
None and deletes of absent keys return False: absence is not a failure.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from podnet.errors import INTERNAL, KERNEL_FAILURE, PodnetError
from podnet.kernel import bpf_asm
from podnet.kernel.bpf_asm import R1, R2, R3, R4, R5, Asm

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351,
               "riscv64": 280}

# commands
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
PROG_GET_NEXT_ID = 11
MAP_GET_NEXT_ID = 12
PROG_GET_FD_BY_ID = 13
MAP_GET_FD_BY_ID = 14
OBJ_GET_INFO_BY_FD = 15

# update flags
ANY = 0
NOEXIST = 1
EXIST = 2

F_NO_PREALLOC = 1
OBJ_NAME_LEN = 16
_ATTR_SIZE = 128          # larger than every struct used; the tail is zero
_PROG_INFO_SIZE = 232     # struct bpf_prog_info of 6.x (a smaller kernel ignores zeros)
_MAP_INFO_SIZE = 96
LOG_SIZE = 1 << 20


class MapType(IntEnum):
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LPM_TRIE = 11


class ProgType(IntEnum):
    SOCKET_FILTER = 1
    SCHED_CLS = 3
    SCHED_ACT = 4
    XDP = 6


PERCPU_TYPES = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfCallError(OSError):
    """A bpf(2) command failed; errno and strerror as the kernel reported them."""


@functools.lru_cache(maxsize=1)
def _nr() -> int:
    machine = platform.machine()
    try:
        return _SYSCALL_NR[machine]
    except KeyError:
        raise PodnetError(KERNEL_FAILURE, "bpf: unsupported architecture", machine) from None


def _addr(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def sys_bpf(cmd: int, attr: ctypes.Array) -> int:
    """bpf(cmd, attr, sizeof attr); the non-negative result, or BpfCallError."""
    while True:
        rc = _libc.syscall(ctypes.c_long(_nr()), ctypes.c_int(cmd),
                           ctypes.c_void_p(ctypes.addressof(attr)), ctypes.c_uint(len(attr)))
        if rc >= 0:
            return int(rc)
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise BpfCallError(err, os.strerror(err))


def _fail(op: str, exc: OSError, details: str = "") -> PodnetError:
    text = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
    return PodnetError(KERNEL_FAILURE, f"bpf {op} failed", f"{text}{details}")


def _attr() -> ctypes.Array:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def _name(name: str) -> bytes:
    raw = name.encode()[: OBJ_NAME_LEN - 1]
    if any(c > 127 or not (chr(c).isalnum() or chr(c) in "_.") for c in raw):
        raise PodnetError(INTERNAL, "bpf object name may hold only [A-Za-z0-9_.]", name)
    return raw


def close(fd: int) -> None:
    """Close a map or program fd; an already-closed fd is fine."""
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


@functools.lru_cache(maxsize=1)
def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU map values hold one slot per possible CPU."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


# --- object info ----------------------------------------------------------------------


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    tag: str
    name: str
    map_ids: tuple[int, ...]


def _get_info(fd: int, info: ctypes.Array, what: str) -> None:
    attr = _attr()
    struct.pack_into("<IIQ", attr, 0, fd, len(info), _addr(info))
    try:
        sys_bpf(OBJ_GET_INFO_BY_FD, attr)
    except OSError as exc:
        raise _fail(f"obj_get_info_by_fd ({what})", exc) from exc


def map_info(fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(_MAP_INFO_SIZE)
    _get_info(fd, info, "map")
    typ, ident, ks, vs, me, flags = struct.unpack_from("<6I", info, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return MapInfo(ident, typ, ks, vs, me, flags, name)


def prog_info(fd: int) -> ProgInfo:
    """Id, type, tag, name and the ids of the maps the program uses."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    _get_info(fd, info, "program")
    nr_maps = struct.unpack_from("<I", info, 52)[0]
    ids = (ctypes.c_uint32 * max(nr_maps, 1))()
    if nr_maps:
        info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        struct.pack_into("<I", info, 52, nr_maps)
        struct.pack_into("<Q", info, 56, ctypes.addressof(ids))
        _get_info(fd, info, "program")
        nr_maps = min(nr_maps, struct.unpack_from("<I", info, 52)[0])
    typ, ident = struct.unpack_from("<II", info, 0)
    tag = info.raw[8:16].hex()
    name = info.raw[64:80].split(b"\0", 1)[0].decode()
    return ProgInfo(ident, typ, tag, name, tuple(ids[i] for i in range(nr_maps)))


def _fd_by_id(cmd: int, ident: int, what: str) -> int:
    attr = _attr()
    struct.pack_into("<III", attr, 0, ident, 0, 0)
    try:
        return sys_bpf(cmd, attr)
    except OSError as exc:
        raise _fail(f"{what}_get_fd_by_id {ident}", exc) from exc


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for the loaded program `prog_id` (the caller closes it)."""
    return _fd_by_id(PROG_GET_FD_BY_ID, prog_id, "prog")


def map_fd_by_id(map_id: int) -> int:
    return _fd_by_id(MAP_GET_FD_BY_ID, map_id, "map")


def _next_ids(cmd: int, what: str) -> Iterator[int]:
    start = 0
    while True:
        attr = _attr()
        struct.pack_into("<I", attr, 0, start)
        try:
            sys_bpf(cmd, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise _fail(f"{what}_get_next_id", exc) from exc
        start = struct.unpack_from("<I", attr, 4)[0]
        yield start


def prog_ids() -> Iterator[int]:
    """Ids of every program loaded in the kernel."""
    return _next_ids(PROG_GET_NEXT_ID, "prog")


def map_ids() -> Iterator[int]:
    return _next_ids(MAP_GET_NEXT_ID, "map")


# --- maps -----------------------------------------------------------------------------


class Map:
    """One BPF map, owning its fd. Keys and values are bytes of the map's sizes."""

    def __init__(self, fd: int, map_type: int, key_size: int, value_size: int,
                 max_entries: int, name: str = "") -> None:
        self.fd = fd
        self.type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.name = name

    def __repr__(self) -> str:
        return (f"Map(fd={self.fd}, type={self.type}, name={self.name!r}, "
                f"key={self.key_size}, value={self.value_size})")

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_fd(cls, fd: int) -> Map:
        info = map_info(fd)
        return cls(fd, info.type, info.key_size, info.value_size, info.max_entries, info.name)

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        """Open an existing map by id (a new fd owned by the returned object)."""
        fd = map_fd_by_id(map_id)
        try:
            return cls.from_fd(fd)
        except BaseException:
            close(fd)
            raise

    @property
    def id(self) -> int:
        return map_info(self.fd).id

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    def close(self) -> None:
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def _value_len(self) -> int:
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size

    def _key(self, key: bytes) -> ctypes.Array:
        if len(key) != self.key_size:
            raise PodnetError(INTERNAL, f"bpf map {self.name or self.fd}: key must be "
                              f"{self.key_size} bytes", f"got {len(key)}")
        return ctypes.create_string_buffer(key, self.key_size)

    def _elem(self, cmd: int, key: ctypes.Array | None, value: ctypes.Array | None,
              flags: int = 0) -> None:
        attr = _attr()
        struct.pack_into("<IIQQQ", attr, 0, self.fd, 0, _addr(key), _addr(value), flags)
        sys_bpf(cmd, attr)

    def update(self, key: bytes, value: bytes, flags: int = ANY) -> None:
        """Set key to value. A per-CPU map takes one value for every CPU (the same value
        for all when given value_size bytes)."""
        want = self._value_len()
        if self.percpu and len(value) == self.value_size:
            slot = (self.value_size + 7) // 8 * 8
            value = value.ljust(slot, b"\0") * possible_cpus()
        if len(value) != want:
            raise PodnetError(INTERNAL, f"bpf map {self.name or self.fd}: value must "
                              f"be {want} bytes", f"got {len(value)}")
        kbuf = self._key(key)
        vbuf = ctypes.create_string_buffer(value, want)
        try:
            self._elem(MAP_UPDATE_ELEM, kbuf, vbuf, flags)
        except OSError as exc:
            raise _fail(f"map_update_elem on map {self.name or self.fd}", exc,
                        f" (key {key.hex()})") from exc

    def lookup(self, key: bytes) -> bytes | None:
        """The value (for a per-CPU map: every CPU's slot concatenated), None if absent."""
        kbuf = self._key(key)
        vbuf = ctypes.create_string_buffer(self._value_len())
        try:
            self._elem(MAP_LOOKUP_ELEM, kbuf, vbuf)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise _fail(f"map_lookup_elem on map {self.name or self.fd}", exc) from exc
        return vbuf.raw

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        """A per-CPU map's value as one value_size slice per possible CPU."""
        raw = self.lookup(key)
        if raw is None:
            return None
        slot = (self.value_size + 7) // 8 * 8
        return [raw[i:i + self.value_size] for i in range(0, len(raw), slot)]

    def delete(self, key: bytes) -> bool:
        """Remove key; False if it was absent."""
        kbuf = self._key(key)
        try:
            self._elem(MAP_DELETE_ELEM, kbuf, None)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise _fail(f"map_delete_elem on map {self.name or self.fd}", exc) from exc
        return True

    def next_key(self, key: bytes | None) -> bytes | None:
        """The key after `key` (None: the first), None at the end."""
        kbuf = self._key(key) if key is not None else None
        nbuf = ctypes.create_string_buffer(self.key_size)
        try:
            self._elem(MAP_GET_NEXT_KEY, kbuf, nbuf)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise _fail(f"map_get_next_key on map {self.name or self.fd}", exc) from exc
        return nbuf.raw

    def keys(self) -> Iterator[bytes]:
        key = self.next_key(None)
        while key is not None:
            yield key
            key = self.next_key(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs; a key deleted meanwhile is skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value


def create_map(map_type: MapType | int, key_size: int, value_size: int, max_entries: int,
               *, name: str = "", flags: int | None = None) -> Map:
    """A new map. An LPM trie needs flags=F_NO_PREALLOC (the default for it) and keys of
    a u32 prefix length followed by the data (see lpm_key)."""
    map_type = int(map_type)
    if flags is None:
        flags = F_NO_PREALLOC if map_type == MapType.LPM_TRIE else 0
    attr = _attr()
    struct.pack_into("<7I", attr, 0, map_type, key_size, value_size, max_entries, flags, 0, 0)
    struct.pack_into("16s", attr, 28, _name(name))
    try:
        fd = sys_bpf(MAP_CREATE, attr)
    except OSError as exc:
        kind = MapType(map_type).name.lower() if map_type in set(MapType) else str(map_type)
        raise _fail(f"map_create ({kind} {name or 'unnamed'}, key {key_size}, value "
                    f"{value_size}, {max_entries} entries)", exc) from exc
    return Map(fd, map_type, key_size, value_size, max_entries, name)


def lpm_key(prefixlen: int, data: bytes) -> bytes:
    """An LPM trie key: u32 prefix length (host order), then the address bytes."""
    return struct.pack("<I", prefixlen) + data


# --- programs -------------------------------------------------------------------------


class Program:
    """One loaded program, owning its fd."""

    def __init__(self, fd: int, name: str = "") -> None:
        self.fd = fd
        self.name = name

    def __repr__(self) -> str:
        return f"Program(fd={self.fd}, name={self.name!r})"

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_id(cls, prog_id: int) -> Program:
        """Adopt a loaded program (for example one a tc filter holds) by its id."""
        fd = prog_fd_by_id(prog_id)
        try:
            return cls(fd, prog_info(fd).name)
        except BaseException:
            close(fd)
            raise

    def info(self) -> ProgInfo:
        return prog_info(self.fd)

    @property
    def id(self) -> int:
        return self.info().id

    def map_ids(self) -> tuple[int, ...]:
        return self.info().map_ids

    def close(self) -> None:
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1


def _prog_load(code: bytes, prog_type: int, name: str, license: str, log_level: int,
               log: ctypes.Array | None) -> int:
    if not code or len(code) % 8:
        raise PodnetError(INTERNAL, "bpf prog_load: bytecode must be a non-empty "
                          "multiple of 8 bytes", f"{len(code)} bytes")
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _attr()
    struct.pack_into("<IIQQIIQII", attr, 0, prog_type, len(code) // 8, _addr(insns),
                     _addr(lic), log_level, len(log) if log is not None else 0, _addr(log),
                     0, 0)
    struct.pack_into("16s", attr, 48, _name(name))
    return sys_bpf(PROG_LOAD, attr)


def _try_load(code: bytes, prog_type: int, name: str, license: str, log_level: int
              ) -> tuple[int | None, str, OSError | None]:
    """(fd or None, verifier log, the error): one load with a log buffer."""
    log = ctypes.create_string_buffer(LOG_SIZE)
    try:
        fd = _prog_load(code, prog_type, name, license, log_level, log)
    except OSError as exc:
        return None, log.value.decode(errors="replace").strip(), exc
    return fd, log.value.decode(errors="replace"), None


def load_program(code: bytes | Asm, *, prog_type: ProgType | int = ProgType.SCHED_CLS,
                 name: str = "", license: str = "GPL", log_level: int = 0) -> Program:
    """Load bytecode; on refusal PodnetError(KERNEL_FAILURE) whose details carry the
    verifier's log (a refused load is retried once with log_level 1 to get it)."""
    if isinstance(code, Asm):
        code = code.assemble()
    if not log_level:
        try:
            return Program(_prog_load(code, int(prog_type), name, license, 0, None), name)
        except OSError:
            pass  # load again with a log, for the error message
    fd, log, exc = _try_load(code, int(prog_type), name, license, max(log_level, 1))
    if fd is None:
        assert exc is not None
        raise _fail(f"prog_load ({name or 'unnamed'}, {len(code) // 8} insns)", exc,
                    f"\nverifier log:\n{log}" if log else "") from exc
    return Program(fd, name)


def verifier_log(code: bytes | Asm, *, prog_type: ProgType | int = ProgType.SCHED_CLS,
                 log_level: int = 2) -> tuple[bool, str]:
    """(loaded?, the verifier's log or the kernel's error) without keeping the program:
    for probes and tests."""
    if isinstance(code, Asm):
        code = code.assemble()
    fd, log, exc = _try_load(code, int(prog_type), "probe", "GPL", log_level)
    if fd is None:
        assert exc is not None
        err = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
        return False, f"{log}\n{err}" if log else err
    close(fd)
    return True, log


# --- feature probes -------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A feature probe's answer: ok, and the kernel's own words when not ok."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


# helpers whose first argument is the skb (r1 is left as the program's context)
_CTX_HELPERS = {"skb_store_bytes", "l3_csum_replace", "l4_csum_replace", "clone_redirect",
                "skb_vlan_push", "skb_vlan_pop", "skb_load_bytes", "skb_change_type",
                "get_hash_recalc", "skb_pull_data", "fib_lookup", "tail_call"}
_ABSENT = ("unknown func", "invalid func", "cannot use helper", "not supported")


def _probe_program(helper: str) -> Asm:
    a = Asm()
    if helper not in _CTX_HELPERS:
        a.mov(R1, 0)
    for reg in (R2, R3, R4, R5):
        a.mov(reg, 0)
    if helper == "skb_vlan_push":
        a.mov(R2, 0x0081)  # htons(ETH_P_8021Q)
    a.call(helper)
    return a.ret(bpf_asm.TC_ACT_OK)


def probe_helper(name: str, prog_type: ProgType | int = ProgType.SCHED_CLS) -> Probe:
    """Can a program of `prog_type` call helper `name`? Loads a tiny program calling it
    (zero arguments, r1 the context for skb helpers). A refusal that names our dummy
    arguments still means present; "unknown func" / "cannot use helper", or no load
    allowed at all, means absent, with the kernel's line as the reason."""
    if name not in bpf_asm.HELPERS:
        raise PodnetError(INTERNAL, "bpf probe: unknown helper", name)
    code = _probe_program(name).assemble()
    fd, log, exc = _try_load(code, int(prog_type), "probe", "GPL", 1)
    if fd is not None:
        close(fd)
        return Probe(True)
    assert exc is not None
    lines = [ln for ln in log.splitlines() if ln.strip()]
    absent = [ln for ln in lines if any(word in ln for word in _ABSENT)]
    if absent:
        return Probe(False, absent[0])
    if not lines:  # refused before verification (EPERM, ...): nothing can load
        return Probe(False, f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: "
                            f"{exc.strerror}")
    reason = [ln for ln in lines if not ln.startswith("processed ")]
    return Probe(True, reason[-1] if reason else lines[-1])


def can_load(prog_type: ProgType | int = ProgType.SCHED_CLS) -> Probe:
    """Does the kernel let this process load a program of `prog_type` at all?"""
    ok, log = verifier_log(Asm().ret(bpf_asm.TC_ACT_OK), prog_type=prog_type, log_level=1)
    return Probe(True) if ok else Probe(False, log)
