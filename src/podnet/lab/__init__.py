"""The lab: a multi-host podnet cluster built from network namespaces on one machine.

    from podnet.lab import Lab, Topo
    with Lab(Topo(hosts=3, pods_per_host=2), backend="vxlan") as lab:
        lab.ping_all()

Imports are lazy so `podnet --help` does not pay for pyroute2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from podnet.lab.topo import Topo

if TYPE_CHECKING:
    from podnet.lab.lab import Host, Lab, PingResult, Pod, cleanup_all_labs

__all__ = ["Host", "Lab", "PingResult", "Pod", "Topo", "cleanup_all_labs"]


def __getattr__(name: str) -> Any:
    if name in ("Host", "Lab", "PingResult", "Pod", "cleanup_all_labs"):
        from podnet.lab import lab

        return getattr(lab, name)
    raise AttributeError(name)
