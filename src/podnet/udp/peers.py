"""The forwarder's peer table: {pod subnet -> peer underlay address}, longest prefix wins.

Why an immutable object: the control thread builds a complete new table and swaps one
reference, so the sending thread never sees a half-updated table and needs no lock.
Each table carries its own lookup cache (destination IP bytes -> address); the sending
thread is its only user.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

DEFAULT_PORT = 8285  # flannel's UDP backend port
CACHE_LIMIT = 65536


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'1.2.3.4:8285', '[fd00::1]:8285' or a bare address -> (ip, port), validated."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    ip = ipaddress.ip_address(host)
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port {port}")
    return str(ip), port


def family_of(ip: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(ip).version == 4 else socket.AF_INET6


class Router:
    """Longest-prefix match over the peer table, with a per-table lookup cache."""

    def __init__(self, peers: Mapping[str, Any], family: int) -> None:
        """`peers`: {cidr: [ip, port] | "ip:port"}; ValueError on anything malformed."""
        v4: list[tuple[int, int, int, tuple]] = []
        v6: list[tuple[int, int, int, tuple]] = []
        table: dict[str, list] = {}
        for cidr, dest in peers.items():
            net = ipaddress.ip_network(cidr, strict=True)
            if isinstance(dest, str):
                ip, port = parse_hostport(dest)
            else:
                ip, port = str(ipaddress.ip_address(dest[0])), int(dest[1])
            if not 0 < port <= 65535:
                raise ValueError(f"bad port {port} for {cidr}")
            if family_of(ip) != family:
                raise ValueError(f"peer {ip} of {cidr} is not in the underlay's address family")
            addr: tuple = (ip, port) if family == socket.AF_INET else (ip, port, 0, 0)
            entry = (net.prefixlen, int(net.netmask), int(net.network_address), addr)
            (v4 if net.version == 4 else v6).append(entry)
            table[str(net)] = [ip, port]
        self.v4 = [e[1:] for e in sorted(v4, key=lambda e: -e[0])]
        self.v6 = [e[1:] for e in sorted(v6, key=lambda e: -e[0])]
        self.table = table
        self.peer_ips = sorted({ip for ip, _ in table.values()})
        self.cache: dict[bytes, tuple | None] = {}

    def resolve(self, key: bytes) -> tuple | None:
        """Peer address for a destination IP (4 or 16 bytes, network order); cached."""
        value = int.from_bytes(key, "big")
        result = None
        for mask, network, addr in self.v4 if len(key) == 4 else self.v6:
            if value & mask == network:
                result = addr
                break
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = result
        return result
