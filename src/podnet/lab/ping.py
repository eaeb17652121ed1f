"""All-pairs ICMP echo from raw sockets opened inside the pods' namespaces.

Why not one `ping` process per pair: a 30-host lab with 2 pods per host has 3,540
ordered pairs, and forking nsenter + ping for each takes tens of seconds under load.
Here each source namespace gets one raw ICMP socket (created by a throwaway thread that
joined the namespace, see podnet.kernel.netns), every echo request goes out at once,
and the replies are collected with select(); unanswered pairs are asked once more. The
whole matrix takes about one round trip when everything answers, and `timeout` per
try for the pairs that do not.

A raw ICMP socket receives every ICMP packet of its namespace, so replies are matched
on (identifier, sequence, source address). Round-trip times use the kernel's receive
timestamp (SO_TIMESTAMPNS), not the moment Python gets round to reading the reply, so
replies that wait in the socket while other requests go out are not counted late.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Hashable, Sequence

from podnet.kernel import netns

ECHO_REQUEST = 8
ECHO_REPLY = 0
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; also the SCM type


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"podnet-lab") -> bytes:
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    csum = _checksum(head + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, csum, ident, seq) + payload


def parse_reply(packet: bytes) -> tuple[str, int, int] | None:
    """(source address, identifier, sequence) of an IPv4 echo reply, else None."""
    if len(packet) < 28:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8 or icmp[0] != ECHO_REPLY:
        return None
    ident, seq = struct.unpack("!HH", icmp[4:8])
    return socket.inet_ntoa(packet[12:16]), ident, seq


def ping_pairs(pairs: Sequence[tuple[str, str, Hashable]], *, timeout: float = 1.0,
               tries: int = 2) -> dict[Hashable, float | None]:
    """pairs: (source namespace, destination IPv4, key). Returns key -> rtt ms or None."""
    by_src: dict[str, list[tuple[str, Hashable]]] = {}
    for src, dst, key in pairs:
        by_src.setdefault(src, []).append((dst, key))
    result: dict[Hashable, float | None] = {key: None for _s, _d, key in pairs}
    socks: dict[int, tuple[socket.socket, int, list[tuple[str, Hashable]]]] = {}
    try:
        for i, (src, targets) in enumerate(by_src.items()):
            sock = netns.socket_in(src, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            ident = (os.getpid() * 131 + i) & 0xFFFF
            socks[sock.fileno()] = (sock, ident, targets)
        for _ in range(tries):
            pending = _send_all(socks, result)
            if not pending:
                break
            _collect(socks, pending, result, timeout)
    finally:
        for sock, _i, _t in socks.values():
            sock.close()
    return result


def _send_all(socks: dict[int, tuple[socket.socket, int, list[tuple[str, Hashable]]]],
              result: dict[Hashable, float | None]) -> dict[tuple[int, int], tuple]:
    """Send an echo request for every unanswered pair; {(fd, seq): (dst, key, t0)}."""
    pending: dict[tuple[int, int], tuple] = {}
    for fd, (sock, ident, targets) in socks.items():
        for seq, (dst, key) in enumerate(targets):
            if result[key] is not None:
                continue
            t0 = time.time_ns()
            with contextlib.suppress(OSError):  # e.g. no route: stays unanswered
                sock.sendto(echo_request(ident, seq), (dst, 0))
            pending[(fd, seq)] = (dst, key, t0)
    return pending


def _collect(socks: dict[int, tuple[socket.socket, int, list[tuple[str, Hashable]]]],
             pending: dict[tuple[int, int], tuple], result: dict[Hashable, float | None],
             timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _w, _x = select.select(list(socks), [], [], left)
        for fd in ready:
            sock, ident, _targets = socks[fd]
            while True:
                try:
                    packet, ancdata, _flags, _addr = sock.recvmsg(65535, 64)
                except (BlockingIOError, InterruptedError):
                    break
                now = _rx_time_ns(ancdata)
                reply = parse_reply(packet)
                if reply is None or reply[1] != ident:
                    continue
                entry = pending.get((fd, reply[2]))
                if entry is None or entry[0] != reply[0]:
                    continue
                del pending[(fd, reply[2])]
                result[entry[1]] = round(max(0, now - entry[2]) / 1e6, 3)


def _rx_time_ns(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The kernel's receive timestamp (CLOCK_REALTIME ns), else now."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("@qq", data[:16])
            return sec * 1_000_000_000 + nsec
    return time.time_ns()
