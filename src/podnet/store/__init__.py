"""Stores: the embedded SQLite file (default) and etcd v3."""

from __future__ import annotations

from podnet.store.base import Entry, Event, Store, Watch

__all__ = ["Entry", "Event", "Store", "Watch", "open_store"]


def open_store(url: str) -> Store:
    """Open a store from a URL: a path or sqlite:///path, or etcd://host:port[,host:port]."""
    if url.startswith("etcd://"):
        from podnet.store.etcd import EtcdStore

        return EtcdStore.from_url(url)
    path = url.removeprefix("sqlite://")
    from podnet.store.sqlite import SqliteStore

    return SqliteStore(path)
