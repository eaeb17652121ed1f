"""Validation of network definitions and subnets: every rule in one place, code 7 on error."""

from __future__ import annotations

import ipaddress
import re

from podnet.backends.overlay import BACKENDS as OVERLAY_DRIVERS
from podnet.backends.overlay.config import from_network
from podnet.errors import invalid
from podnet.kernel_names import IFNAMSIZ, bridge_name
from podnet.model import Network

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LOCAL_DRIVERS = ("null", "bridge")


def driver_names() -> list[str]:
    """Every driver a network may name: one-host networks and the overlay backends."""
    return sorted({*LOCAL_DRIVERS, *OVERLAY_DRIVERS})


def network_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid("invalid network name", repr(name))
    return name


def ipv4_subnet(cidr: str, what: str = "subnet") -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(cidr, strict=False)
    except ValueError as exc:
        raise invalid(f"invalid {what}", str(exc)) from exc
    if str(subnet) != cidr:
        raise invalid(f"{what} has host bits set", f"{cidr} (did you mean {subnet}?)")
    return subnet


def gateway_of(subnet: ipaddress.IPv4Network, gateway: str | None) -> str:
    """The gateway (default: the first host address), checked to be a host of `subnet`."""
    if gateway is None:
        return str(subnet.network_address + 1)
    try:
        gw = ipaddress.IPv4Address(gateway)
    except ValueError as exc:
        raise invalid("invalid gateway", str(exc)) from exc
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise invalid("gateway is not a host address of the subnet", f"{gw} / {subnet}")
    return str(gw)


def network(net: Network) -> Network:
    """Check a definition and fill defaults (gateway, bridge name); raises code 7."""
    network_name(net.name)
    if net.driver not in driver_names():
        raise invalid(f"unknown driver {net.driver!r}", f"known: {', '.join(driver_names())}")
    if net.mtu is not None and not (68 <= int(net.mtu) <= 65535):
        raise invalid("mtu out of range 68-65535", str(net.mtu))
    if net.driver == "null":
        return net
    if not net.subnet:
        raise invalid("network needs a subnet")
    subnet = ipv4_subnet(net.subnet)
    if subnet.prefixlen > 30:
        raise invalid("subnet too small (need /30 or larger)", net.subnet)
    if net.driver in OVERLAY_DRIVERS:
        from_network(net)
        if not net.bridge:
            net.bridge = bridge_name(net.name)
        return net
    net.gateway = gateway_of(subnet, net.gateway)
    if not net.bridge:
        net.bridge = bridge_name(net.name)
    elif len(net.bridge) > IFNAMSIZ:
        raise invalid(f"bridge name longer than {IFNAMSIZ} characters", net.bridge)
    return net


def same_definition(a: Network, b: Network) -> bool:
    fields = ("driver", "subnet", "subnet_len")
    if any(getattr(a, f) != getattr(b, f) for f in fields):
        return False
    return b.gateway is None or a.gateway == b.gateway
