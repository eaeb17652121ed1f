"""flannel-shaped overlay backends, registered by name (imported only when used)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podnet.backends.overlay.base import OverlayBackend

BACKENDS = ("vxlan", "host-gw", "udp")
_REGISTRY = {
    "vxlan": "podnet.backends.overlay.vxlan:VxlanBackend",
    "host-gw": "podnet.backends.overlay.hostgw:HostGwBackend",
    "udp": "podnet.backends.overlay.udp:UdpBackend",
}


def get_backend(name: str, *, node: str, run_dir: str) -> OverlayBackend:
    module, _, cls = _REGISTRY[name].partition(":")
    backend: OverlayBackend = getattr(importlib.import_module(module), cls)(node=node,
                                                                          run_dir=run_dir)
    return backend
