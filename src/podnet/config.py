"""Default paths and the environment variables that override them.

Several agents (one per lab host) may run on one machine, so every path can be set by
flag, by environment variable, and (for the CNI plugin) by a conflist key.
"""

from __future__ import annotations

import os

DEFAULT_STORE = "/var/lib/podnet/podnet.db"
DEFAULT_SOCKET = "/run/podnet/agent.sock"
ENV_STORE = "PODNET_STORE"
ENV_SOCKET = "PODNET_AGENT_SOCKET"
ENV_NODE = "PODNET_NODE_NAME"


def store_url(explicit: str | None = None) -> str:
    """The store to use: an explicit value, else $PODNET_STORE, else the default file.

    A plain path (or sqlite:///path) is the embedded SQLite store; etcd://host:port[,...]
    is an etcd v3 cluster, etcd+https://host:port[,...] one spoken to over TLS.
    """
    return explicit or os.environ.get(ENV_STORE) or DEFAULT_STORE


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


def node_name(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_NODE) or os.uname().nodename


# -- etcd TLS and auth: flags of the `podnet` command, else the environment -------------
# Never from a CNI configuration or the store URL (a conflist must not be able to point
# the agent's credentials at another server).
ENV_ETCD = {"cacert": "PODNET_ETCD_CACERT", "cert": "PODNET_ETCD_CERT",
            "key": "PODNET_ETCD_KEY", "user": "PODNET_ETCD_USER",
            "password": "PODNET_ETCD_PASSWORD"}
_etcd_flags: dict[str, str] = {}


def set_etcd_flags(values: dict[str, str | None], *, override: bool = True) -> None:
    """Record --etcd-* values for every store this process opens, replacing earlier ones
    (override=False: add only where no flag was given, e.g. a lab's own certificates
    under `podnet --lab`)."""
    if override:
        _etcd_flags.clear()
    for key, value in values.items():
        if key not in ENV_ETCD:
            raise ValueError(f"unknown etcd setting {key!r}")
        if value and (override or key not in _etcd_flags):
            _etcd_flags[key] = value


def etcd_settings() -> dict[str, str]:
    """cacert, cert, key, user, password for etcd stores: flag, else $PODNET_ETCD_*."""
    out = {}
    for key, env in ENV_ETCD.items():
        value = _etcd_flags.get(key) or os.environ.get(env)
        if value:
            out[key] = value
    return out
