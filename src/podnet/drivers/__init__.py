"""Pod drivers (how a port is plugged into a sandbox), registered by name; modules are
imported only when used. Which driver a network's pods use is the agent's choice
(agent/attach.py): overlays plug their pods into a per-host bridge too."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podnet.drivers.base import PodDriver

_REGISTRY = {
    "null": "podnet.drivers.null:NullDriver",
    "bridge": "podnet.drivers.bridge:BridgeDriver",
}


def pod_driver_names() -> list[str]:
    return sorted(_REGISTRY)


def new_pod_driver(name: str) -> PodDriver:
    module, _, cls = _REGISTRY[name].partition(":")
    driver: PodDriver = getattr(importlib.import_module(module), cls)()
    return driver



def pod_driver_name(network_driver: str) -> str:
    """The pod driver a network's pods use: overlays bridge their pods per host too."""
    return "null" if network_driver == "null" else "bridge"


class PodDrivers:
    """One instance per pod driver, shared by everything in a process that plugs pods
    (the drivers remember per-network host objects they have already made)."""

    def __init__(self) -> None:
        self._drivers: dict[str, PodDriver] = {}

    def for_network(self, network_driver: str) -> PodDriver:
        name = pod_driver_name(network_driver)
        driver = self._drivers.get(name)
        if driver is None:
            driver = self._drivers[name] = new_pod_driver(name)
        return driver
