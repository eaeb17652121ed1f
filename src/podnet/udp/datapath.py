"""The udp forwarder's two packet loops and its wire format (why: see forwarder.py).

Wire format of one UDP datagram: an 8-byte header `!IBBBB` (sequence number, chunk
index, chunk count, MAGIC, flags=0) followed by one chunk of (12-byte virtio-net header
+ IP packet). Every chunk but the last of a super-packet is exactly `mtu - 8` bytes.
The virtio-net header is native-endian: both ends must share the byte order.

Hot-loop rules (each costs measurable throughput in Python): no per-chunk Python at
all (precomputed memoryviews of header slots and buffers; one packet's headers are
written with two slice assignments), no copies (views of the receive buffer go to
writev), no allocation per packet (buffers are reused), locals instead of attribute
lookups, counters as plain attributes written by one thread.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import struct
import sys
import time

from podnet.kernel.tun import VNET_HDR_LEN
from podnet.udp.peers import Router

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104

HDR = struct.Struct("!IBBBB")  # seq, index, count, magic, flags
HDR_LEN = HDR.size
MAGIC = 0xA1
MAX_CHUNKS = 255
CHUNK_INDEX = bytes(range(MAX_CHUNKS))
MAX_UDP_PAYLOAD = 65507  # one sendmsg, GSO or not, carries at most this much
MAX_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels (128 in newer ones)
TUN_READ_SIZE = 1 << 17
RX_BUF_SIZE = 65536 + 1024  # a GRO batch is at most one 64 KB UDP payload
MAX_PENDING = 64  # super-packets waiting for more chunks
PENDING_TIMEOUT = 1.0

_MISS = object()


class Counters:
    """Named integer counters, each written by one thread only."""

    NAMES: tuple[str, ...] = ()

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.NAMES}


class TxCounters(Counters):
    NAMES = ("tx_packets", "tx_bytes", "tx_datagrams", "tx_sendmsg", "tx_drop_no_peer",
             "tx_drop_bad", "tx_read_errors", "tx_send_errors")


class RxCounters(Counters):
    NAMES = ("rx_packets", "rx_bytes", "rx_datagrams", "rx_recvmsg", "rx_drop_bad",
             "rx_drop_unknown_peer", "rx_drop_incomplete", "rx_recv_errors",
             "rx_write_errors")


class Sender:
    """TUN -> UDP: read a super-packet, find its peer, send it as UDP GSO chunks."""

    def __init__(self, tun_fd: int, sock: socket.socket, seg_size: int, family: int) -> None:
        self.tun_fd = tun_fd
        self.sock = sock
        self.seg_size = seg_size  # UDP payload per datagram
        self.router = Router({}, family)  # replaced whole by the control thread
        self.stats = TxCounters()
        self.gso = True
        self.last_error = ""

    def run(self) -> None:
        """Forever. No per-chunk Python: the iovec list alternates precomputed views of
        the header slots and of the read buffer, and one packet's headers are written
        with two slice assignments (seq and count are shared, index is a column)."""
        tun, sock, st = self.tun_fd, self.sock, self.stats
        buf = bytearray(TUN_READ_SIZE)
        bmv = memoryview(buf)
        bufs = [buf]
        readv = os.readv
        sendmsg = sock.sendmsg
        v = VNET_HDR_LEN
        g = self.seg_size
        d = g - HDR_LEN
        per_call = min(MAX_UDP_PAYLOAD // g, MAX_GSO_SEGMENTS)
        step = 2 * per_call
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", g))]
        hdrs = bytearray(HDR_LEN * MAX_CHUNKS)
        hmv = memoryview(hdrs)
        slots: list = []
        for i in range(MAX_CHUNKS):
            slots.append(hmv[i * HDR_LEN:(i + 1) * HDR_LEN])
            slots.append(bmv[i * d:(i + 1) * d])
        zero = b"\0"
        tail = bytes((MAGIC, 0))
        seq = random.getrandbits(32)  # a restarted sender must not match stale reassembly
        while True:
            try:
                n = readv(tun, bufs)
            except OSError as exc:
                st.tx_read_errors += 1
                self.last_error = f"tun read: {exc}"
                if exc.errno not in (errno.EINTR, errno.EAGAIN):
                    time.sleep(0.05)  # device gone or detached: do not spin
                continue
            if n <= v + 20:
                st.tx_drop_bad += 1
                continue
            ver = buf[v] >> 4
            if ver == 4:
                key = bytes(bmv[v + 16:v + 20])
            elif ver == 6 and n >= v + 40:
                key = bytes(bmv[v + 24:v + 40])
            else:
                st.tx_drop_bad += 1
                continue
            router = self.router
            addr = router.cache.get(key, _MISS)
            if addr is _MISS:
                addr = router.resolve(key)
            if addr is None:
                st.tx_drop_no_peer += 1
                continue
            cnt = (n + d - 1) // d
            if cnt > MAX_CHUNKS:
                st.tx_drop_bad += 1
                continue
            seq = (seq + 1) & 0xFFFFFFFF
            end = HDR_LEN * cnt
            hdrs[:end] = (seq.to_bytes(4, "big") + zero + bytes((cnt,)) + tail) * cnt
            hdrs[4:end:HDR_LEN] = CHUNK_INDEX[:cnt]
            iov = slots[:2 * cnt]
            iov[-1] = bmv[(cnt - 1) * d:n]
            try:
                if cnt == 1:
                    sendmsg(iov, (), 0, addr)
                    st.tx_sendmsg += 1
                elif not self.gso:
                    for i in range(0, 2 * cnt, 2):
                        sendmsg(iov[i:i + 2], (), 0, addr)
                    st.tx_sendmsg += cnt
                elif cnt <= per_call:
                    sendmsg(iov, cmsg, 0, addr)
                    st.tx_sendmsg += 1
                else:
                    for i in range(0, 2 * cnt, step):
                        sendmsg(iov[i:i + step], cmsg, 0, addr)
                        st.tx_sendmsg += 1
            except OSError as exc:
                st.tx_send_errors += 1
                self.last_error = f"udp send: {exc}"
                if exc.errno == errno.EIO and self.gso:
                    # UDP GSO needs checksum offload on the egress device: fall back.
                    self.gso = False
                    self.last_error += " (UDP GSO refused: one datagram per chunk now)"
                continue
            st.tx_packets += 1
            st.tx_bytes += n
            st.tx_datagrams += cnt


class _Partial:
    """Chunks received so far of one super-packet, and the receive buffers they pin."""

    __slots__ = ("cnt", "t", "parts", "filled", "in_order", "size", "bufs")

    def __init__(self, cnt: int, t: float) -> None:
        self.cnt = cnt
        self.t = t
        self.parts: list = []
        self.filled = 0
        self.size = 0
        self.in_order = True
        self.bufs: list[_RxBuf] = []

    def add(self, first: int, parts: list, size: int) -> bool:
        """Add consecutive chunks starting at index `first`; True once complete."""
        if self.in_order and first == len(self.parts):
            self.parts.extend(parts)
            self.filled = len(self.parts)
            self.size += size
        else:
            if self.in_order:
                self.in_order = False
                self.parts.extend([None] * (self.cnt - len(self.parts)))
            slots = self.parts
            for j, part in enumerate(parts, first):
                if slots[j] is None:
                    slots[j] = part
                    self.filled += 1
                    self.size += len(part)
        return self.filled == self.cnt


class _RxBuf:
    """A receive buffer with precomputed views of the chunk payloads at segment size g.

    Reused for the next recvmsg unless a partial super-packet still points into it
    (refs > 0): then it waits for that packet to complete or be evicted.
    """

    __slots__ = ("buf", "bufs", "mv", "parts", "refs")

    def __init__(self, g: int) -> None:
        self.buf = bytearray(RX_BUF_SIZE)
        self.bufs = [self.buf]
        self.mv = memoryview(self.buf)
        self.parts = [self.mv[o + HDR_LEN:o + g] for o in range(0, RX_BUF_SIZE, g)]
        self.refs = 0


class Receiver:
    """UDP -> TUN: receive GRO batches of chunks, write each whole super-packet."""

    def __init__(self, tun_fd: int, sock: socket.socket, seg_size: int,
                 accept_any: bool) -> None:
        self.tun_fd = tun_fd
        self.sock = sock
        self.seg_size = seg_size  # the usual GRO segment size (peers share the MTU)
        self.accept_any = accept_any
        self.peer_ips: frozenset[str] = frozenset()  # replaced whole on set_peers
        self.stats = RxCounters()
        self.pending: dict[tuple, _Partial] = {}
        self.last_error = ""
        self._free: list[_RxBuf] = []
        self._cur = _RxBuf(seg_size)

    def run(self) -> None:
        """Forever. recvmsg_into a reused buffer whose chunk views are precomputed, so a
        batch of consecutive chunks of one super-packet (the usual case) becomes one
        writev without per-chunk Python and without copies; anything else goes through
        reassembly. A lost chunk loses only its own super-packet."""
        tun, sock, st = self.tun_fd, self.sock, self.stats
        recvmsg_into = sock.recvmsg_into
        write = os.write
        writev = os.writev
        unpack_from = HDR.unpack_from
        anc = socket.CMSG_SPACE(4)
        h = HDR_LEN
        std_g = self.seg_size
        collect = self._collect
        trunc = int(socket.MSG_TRUNC)  # an IntFlag: & on it runs Python code
        while True:
            rb = self._cur
            buf = rb.buf
            try:
                n, ancdata, flags, src = recvmsg_into(rb.bufs, anc)
            except OSError as exc:
                st.rx_recv_errors += 1
                self.last_error = f"udp recv: {exc}"
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    time.sleep(0.05)
                continue
            st.rx_recvmsg += 1
            if n <= h or flags & trunc:
                st.rx_drop_bad += 1
                continue
            if not self.accept_any and src[0] not in self.peer_ips:
                st.rx_drop_unknown_peer += 1
                continue
            g = n
            for level, kind, cdata in ancdata:
                if level == SOL_UDP and kind == UDP_GRO:
                    g = int.from_bytes(cdata[:4], sys.byteorder) or n
            seq, idx, cnt, magic, _flags = unpack_from(buf, 0)
            if magic != MAGIC or idx >= cnt:
                st.rx_drop_bad += 1
                continue
            mv = rb.mv
            try:
                if g >= n:  # one datagram
                    st.rx_datagrams += 1
                    if cnt == 1:
                        write(tun, mv[h:n])
                        st.rx_packets += 1
                        st.rx_bytes += n - h
                    else:
                        collect(src, seq, cnt, idx, [mv[h:n]], n - h, rb)
                    continue
                nseg = (n + g - 1) // g
                st.rx_datagrams += nseg
                last = (nseg - 1) * g
                seq2, idx2, cnt2, magic2, _f2 = unpack_from(buf, last)
                if (magic2 == MAGIC and seq2 == seq and cnt2 == cnt and idx2 < cnt
                        and idx2 - idx == nseg - 1):
                    # Consecutive chunks of one super-packet: views, no copies.
                    if g == std_g:
                        parts = rb.parts[:nseg]
                        parts[-1] = mv[last + h:n]
                    else:
                        mvn = mv[:n]
                        parts = [mvn[o + h:o + g] for o in range(0, n, g)]
                    if nseg == cnt:
                        writev(tun, parts)
                        st.rx_packets += 1
                        st.rx_bytes += n - nseg * h
                    else:
                        collect(src, seq, cnt, idx, parts, n - nseg * h, rb)
                else:  # mixed batch (e.g. merged by a NIC's GRO): chunk by chunk
                    mvn = mv[:n]
                    for o in range(0, n, g):
                        s, i, c, m, _f = unpack_from(buf, o)
                        part = mvn[o + h:o + g]
                        if m != MAGIC or i >= c or not part:
                            st.rx_drop_bad += 1
                            continue
                        collect(src, s, c, i, [part], len(part), rb)
            except OSError as exc:
                st.rx_write_errors += 1
                self.last_error = f"tun write: {exc}"
            if rb.refs:  # a partial packet points into it: receive elsewhere next
                self._cur = self._free.pop() if self._free else _RxBuf(std_g)

    def _release(self, entry: _Partial) -> None:
        for rb in entry.bufs:
            rb.refs -= 1
            if rb.refs == 0 and rb is not self._cur:
                self._free.append(rb)

    def _collect(self, src: tuple, seq: int, cnt: int, first: int, parts: list,
                 size: int, rb: _RxBuf) -> None:
        """Reassembly of a super-packet whose chunks came in several batches.

        In order (the sender's two GSO calls for a packet above 65,507 bytes): extend a
        list. Out of order: index-addressed slots. Entries older than PENDING_TIMEOUT,
        or beyond MAX_PENDING, are dropped and counted.
        """
        pending = self.pending
        st = self.stats
        if first + len(parts) > cnt:
            st.rx_drop_bad += 1
            return
        key = (src, seq)
        entry = pending.get(key)
        if entry is None:
            now = time.monotonic()
            while pending:
                oldest = next(iter(pending))
                if len(pending) < MAX_PENDING and now - pending[oldest].t < PENDING_TIMEOUT:
                    break
                self._release(pending.pop(oldest))
                st.rx_drop_incomplete += 1
            entry = pending[key] = _Partial(cnt, now)
        elif entry.cnt != cnt:
            st.rx_drop_bad += 1
            return
        if entry.add(first, parts, size):
            del pending[key]
            self._release(entry)
            os.writev(self.tun_fd, entry.parts)
            st.rx_packets += 1
            st.rx_bytes += entry.size
        elif not entry.bufs or entry.bufs[-1] is not rb:
            entry.bufs.append(rb)
            rb.refs += 1
