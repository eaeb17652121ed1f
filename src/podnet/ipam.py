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

from podnet import keys
from podnet.errors import POOL_EXHAUSTED, Conflict, PodnetError
from podnet.store import Store


def allocate(
    store: Store,
    network: str,
    subnet: str,
    *,
    container_id: str,
    ifname: str,
    pod: str,
    reserved: Iterable[str] = (),
) -> str:
    """Reserve one free host address of `subnet`; returns it as CIDR (a.b.c.d/len)."""
    net = ipaddress.IPv4Network(subnet)
    skip = {str(net.network_address), str(net.broadcast_address), *reserved}
    owner = {"container_id": container_id, "ifname": ifname, "pod": pod, "subnet": subnet}
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
            return f"{candidate}/{net.prefixlen}"
        else:
            raise PodnetError(POOL_EXHAUSTED, f"no free address left in {subnet}", network)
    raise PodnetError(11, "address allocation kept conflicting; try again", network)


def release(store: Store, network: str, ip: str, *, container_id: str | None = None) -> bool:
    """Free an address (only if still owned by container_id, when given)."""
    key = keys.address(network, ip.split("/")[0])
    entry = store.get(key)
    if entry is None:
        return False
    if container_id is not None and entry.value.get("container_id") != container_id:
        return False
    try:
        return store.delete(key, revision=entry.revision)
    except Conflict:
        return False


def release_owner(store: Store, network: str, container_id: str, ifname: str) -> list[str]:
    """Free every address of (container_id, ifname) on `network` (leak repair)."""
    freed = []
    for entry in store.list(keys.address_prefix(network)):
        v = entry.value
        if v.get("container_id") == container_id and v.get("ifname") == ifname:
            try:
                if store.delete(entry.key, revision=entry.revision):
                    freed.append(entry.key.rsplit("/", 1)[1])
            except Conflict:
                pass
    return freed


def allocations(store: Store, network: str) -> dict[str, dict]:
    return {e.key.rsplit("/", 1)[1]: e.value for e in store.list(keys.address_prefix(network))}
