"""Address allocation over the store.

Each address is its own key, created with create-if-absent, so concurrent allocators
(many CNI processes, several agents) can never hand out one address twice. A caller
picks its first candidate by hashing its owner, which spreads concurrent requests over
the free addresses instead of having them all race for the lowest one. Uncontended,
addresses are handed out lowest-first (as host-local does); after a lost race the
caller retries from a random free address.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from typing import Any

from podnet import keys
from podnet.errors import POOL_EXHAUSTED, TRY_AGAIN_LATER, Conflict, PodnetError, invalid
from podnet.store import Store


def _owner_matches(value: dict[str, Any], device_id: str) -> bool:
    return (value.get("device_id") or value.get("container_id")) == device_id


def allocate(store: Store, network: str, subnet: str, owner: dict[str, Any], *,
             reserved: Iterable[str] = ()) -> str:
    """Reserve one free host address of `subnet` for `owner`; returns the plain IP."""
    net = ipaddress.IPv4Network(subnet)
    skip = {str(net.network_address), str(net.broadcast_address), *reserved}
    for _attempt in range(64):
        used = {e.key.rsplit("/", 1)[1] for e in store.list(keys.address_prefix(network))}
        size = net.num_addresses
        start = 0 if _attempt == 0 else random.randrange(size)
        for offset in range(size):
            candidate = str(net.network_address + (start + offset) % size)
            if candidate in skip or candidate in used:
                continue
            try:
                store.put(keys.address(network, candidate), owner, revision=0)
            except Conflict:
                break  # somebody else took it: re-read and try again
            return candidate
        else:
            raise PodnetError(POOL_EXHAUSTED, f"no free address left in {subnet}", network)
    raise PodnetError(TRY_AGAIN_LATER, "address allocation kept conflicting; try again",
                      network)


def claim(store: Store, network: str, subnet: str, ip: str, owner: dict[str, Any], *,
          reserved: Iterable[str] = ()) -> str:
    """Reserve exactly `ip` (a fixed IP asked for by the caller)."""
    net = ipaddress.IPv4Network(subnet)
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError as exc:
        raise invalid("invalid fixed IP", str(exc)) from exc
    if addr not in net or addr in (net.network_address, net.broadcast_address) \
            or str(addr) in set(reserved):
        raise invalid(f"fixed IP {ip} is not a free host address of {subnet}")
    try:
        store.put(keys.address(network, str(addr)), owner, revision=0)
    except Conflict as exc:
        raise PodnetError(POOL_EXHAUSTED, f"address {ip} is already in use", network) from exc
    return str(addr)


def release(store: Store, network: str, ip: str, *, device_id: str | None = None) -> bool:
    """Free an address (only if still owned by device_id, when given)."""
    key = keys.address(network, ip.split("/")[0])
    entry = store.get(key)
    if entry is None:
        return False
    if device_id is not None and not _owner_matches(entry.value, device_id):
        return False
    try:
        return store.delete(key, revision=entry.revision)
    except Conflict:
        return False


def release_owner(store: Store, network: str, device_id: str, ifname: str) -> list[str]:
    """Free every address of (device_id, ifname) on `network` (leak repair)."""
    freed = []
    for entry in store.list(keys.address_prefix(network)):
        v = entry.value
        if _owner_matches(v, device_id) and v.get("ifname") == ifname:
            try:
                if store.delete(entry.key, revision=entry.revision):
                    freed.append(entry.key.rsplit("/", 1)[1])
            except Conflict:
                pass
    return freed


def allocations(store: Store, network: str) -> dict[str, dict[str, Any]]:
    return {e.key.rsplit("/", 1)[1]: e.value for e in store.list(keys.address_prefix(network))}
