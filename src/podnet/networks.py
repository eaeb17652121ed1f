"""Network definitions: validation, creation (subnet given or carved from a pool), lookup.

A network's subnet is reserved under its own key with create-if-absent, so two
concurrent creators can never hand out overlapping subnets, and an inline network
defined by many CNI calls at once is created exactly once.
"""

from __future__ import annotations

import ipaddress
import re
import time

from podnet import keys
from podnet.errors import IN_USE, INVALID_CONFIG, NOT_FOUND, Conflict, PodnetError
from podnet.model import Network
from podnet.store import Store

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_POOL = "10.200.0.0/16"
DEFAULT_POOL_PREFIX = 24
LOCAL_DRIVERS = ("null", "bridge")
OVERLAY_DRIVERS = ("vxlan", "host-gw", "udp")


def _invalid(msg: str, details: str = "") -> PodnetError:
    return PodnetError(INVALID_CONFIG, msg, details)


def validate(net: Network) -> Network:
    """Check a definition and fill defaults (gateway, bridge name); raises code 7."""
    from podnet.drivers import driver_names

    if not NAME_RE.match(net.name or ""):
        raise _invalid("invalid network name", repr(net.name))
    if net.driver not in driver_names():
        raise _invalid(f"unknown driver {net.driver!r}", f"known: {', '.join(driver_names())}")
    if net.mtu is not None and not (68 <= int(net.mtu) <= 65535):
        raise _invalid("mtu out of range 68-65535", str(net.mtu))
    if net.driver == "null":
        return net
    if not net.subnet:
        raise _invalid("network needs a subnet")
    try:
        subnet = ipaddress.IPv4Network(net.subnet, strict=False)
    except ValueError as exc:
        raise _invalid("invalid subnet", str(exc)) from exc
    if str(subnet) != net.subnet:
        raise _invalid("subnet has host bits set", f"{net.subnet} (did you mean {subnet}?)")
    if subnet.prefixlen > 30:
        raise _invalid("subnet too small (need /30 or larger)", net.subnet)
    if net.driver in OVERLAY_DRIVERS:
        from podnet.overlay.config import from_network

        from_network(net)
        if not net.bridge:
            net.bridge = default_bridge_name(net.name)
        return net
    if net.gateway is None:
        net.gateway = str(subnet.network_address + 1)
    try:
        gw = ipaddress.IPv4Address(net.gateway)
    except ValueError as exc:
        raise _invalid("invalid gateway", str(exc)) from exc
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise _invalid("gateway is not a host address of the subnet", f"{gw} / {subnet}")
    if not net.bridge:
        net.bridge = default_bridge_name(net.name)
    elif len(net.bridge) > 15:
        raise _invalid("bridge name longer than 15 characters", net.bridge)
    return net


def default_bridge_name(network: str) -> str:
    from podnet.kernel_names import bridge_name

    return bridge_name(network)


def get(store: Store, name: str) -> Network:
    entry = store.get(keys.network(name))
    if entry is None:
        raise _invalid(f"network {name!r} does not exist")
    return Network.from_dict(entry.value)


def find(store: Store, name: str) -> Network | None:
    entry = store.get(keys.network(name))
    return Network.from_dict(entry.value) if entry else None


def list_all(store: Store) -> list[Network]:
    return [Network.from_dict(e.value) for e in store.list(keys.NETWORKS)]


def _overlapping(store: Store, cidr: str) -> str | None:
    new = ipaddress.IPv4Network(cidr)
    for entry in store.list(keys.SUBNETS):
        other = ipaddress.IPv4Network(entry.value["cidr"])
        if other.overlaps(new):
            return f"{other} (network {entry.value['network']})"
    return None


def _carve(store: Store, pool: str, prefix: int) -> str:
    pool_net = ipaddress.IPv4Network(pool)
    for candidate in pool_net.subnets(new_prefix=prefix):
        if _overlapping(store, str(candidate)) is None:
            return str(candidate)
    raise PodnetError(100, "no free subnet left in pool", pool)


def create(
    store: Store, net: Network, *, exist_ok: bool = False, pool: str | None = None
) -> Network:
    """Store a new network; with exist_ok, an identical existing definition is returned."""
    if not net.subnet and net.driver != "null":
        pool = pool or DEFAULT_POOL
        for _ in range(20):
            net.subnet = _carve(store, pool, DEFAULT_POOL_PREFIX)
            try:
                return _create_checked(store, validate(net), exist_ok=exist_ok)
            except Conflict:
                net.gateway = None
                continue
        raise PodnetError(11, "could not reserve a subnet from the pool", pool)
    return _create_checked(store, validate(net), exist_ok=exist_ok)


def _create_checked(store: Store, net: Network, *, exist_ok: bool) -> Network:
    existing = find(store, net.name)
    if existing is not None:
        if exist_ok and same_definition(existing, net):
            return existing
        if exist_ok:
            raise _invalid(
                f"network {net.name!r} exists with a different definition",
                f"stored: {existing.driver} {existing.subnet}; asked: {net.driver} {net.subnet}",
            )
        raise PodnetError(IN_USE, f"network {net.name!r} already exists")
    if net.subnet:
        clash = _overlapping(store, net.subnet)
        if clash:
            raise _invalid(f"subnet {net.subnet} overlaps {clash}")
    net.created = time.time()
    reserved = False
    try:
        if net.subnet:
            reservation = {"cidr": net.subnet, "network": net.name}
            store.put(keys.subnet(net.subnet), reservation, revision=0)
            reserved = True
        store.put(keys.network(net.name), net.to_dict(), revision=0)
    except Conflict:
        if reserved:
            store.delete(keys.subnet(net.subnet or ""))
        winner = find(store, net.name)
        if winner is not None and exist_ok and same_definition(winner, net):
            return winner
        raise
    return net


def same_definition(a: Network, b: Network) -> bool:
    fields = ("driver", "subnet", "subnet_len")
    if any(getattr(a, f) != getattr(b, f) for f in fields):
        return False
    return b.gateway is None or a.gateway == b.gateway


def delete(store: Store, name: str, *, force: bool = False) -> Network:
    net = find(store, name)
    if net is None:
        raise PodnetError(NOT_FOUND, f"network {name!r} does not exist")
    if not force and store.list(keys.endpoint_prefix(name)):
        raise PodnetError(IN_USE, f"network {name!r} has attached endpoints; detach them first")
    store.delete(keys.network(name))
    if net.subnet:
        store.delete(keys.subnet(net.subnet))
    return net
