"""Network drivers, registered by name. Modules are imported only when used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podnet.drivers.base import Driver, DriverContext

_REGISTRY = {
    "null": "podnet.drivers.null:NullDriver",
    "bridge": "podnet.drivers.bridge:BridgeDriver",
    "vxlan": "podnet.drivers.vxlan:VxlanDriver",
    "host-gw": "podnet.drivers.hostgw:HostGwDriver",
    "udp": "podnet.drivers.udp:UdpDriver",
}


def driver_names() -> list[str]:
    return sorted(_REGISTRY)


def get_driver(name: str, ctx: DriverContext) -> Driver:
    module, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)(ctx)
