"""The resource layer: networks, subnets, subnet pools, ports and host leases.

Front ends and the agent call `open_resources(url)` and the `Resources` protocol
(resources/base.py); only this package, the stores and the service datapath know the
store's key layout (podnet.keys).
"""

from __future__ import annotations

from podnet.resources.base import HostLease, HostLeases, LeaseEvent, Resources

__all__ = ["HostLease", "HostLeases", "LeaseEvent", "Resources", "open_resources"]


def open_resources(url: str, etcd: dict[str, str] | None = None) -> Resources:
    """Resources on the store at `url` (a path, sqlite:///path, etcd://host:port or
    etcd+https://host:port; `etcd`: TLS and auth settings, see store.open_store)."""
    from podnet.resources.local import LocalResources
    from podnet.store import open_store

    return LocalResources(open_store(url, etcd=etcd))
