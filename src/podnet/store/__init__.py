"""Stores: the embedded SQLite file (default) and etcd v3."""

from __future__ import annotations

from podnet.store.base import Entry, Event, Store, Watch

__all__ = ["ETCD_SCHEMES", "Entry", "Event", "Store", "Watch", "is_etcd", "open_store"]

ETCD_SCHEMES = ("etcd://", "etcd+https://")


def is_etcd(url: str) -> bool:
    return url.startswith(ETCD_SCHEMES)


def open_store(url: str, etcd: dict[str, str] | None = None) -> Store:
    """Open a store from a URL: a path or sqlite:///path, or etcd://host:port[,host:port]
    (etcd+https://... for TLS). `etcd`: TLS and auth settings (cacert, cert, key, user,
    password); None takes them from the --etcd-* flags and PODNET_ETCD_* variables."""
    if is_etcd(url):
        from podnet import config
        from podnet.store.etcd import EtcdStore
        from podnet.store.etcd_tls import EtcdSecurity

        settings = config.etcd_settings() if etcd is None else etcd
        return EtcdStore.from_url(url, security=EtcdSecurity.from_settings(settings))
    path = url.removeprefix("sqlite://")
    from podnet.store.sqlite import SqliteStore

    return SqliteStore(path)
