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
    is an etcd v3 cluster.
    """
    return explicit or os.environ.get(ENV_STORE) or DEFAULT_STORE


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


def node_name(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_NODE) or os.uname().nodename
