"""Shared pytest fixtures. Each owner keeps their fixtures in one commented block."""

from __future__ import annotations

import os
import sys

import pytest

# --- etcd (owner: store) ---------------------------------------------------------------
# `etcd_server`: one real etcd for the whole session (127.0.0.1, free ports, temp data
# dir), stopped by PID at the end. `etcd_url`: its store URL, etcd://127.0.0.1:PORT.
# Tests that stop/restart etcd must start their own EtcdServer instead of this one.
if os.path.dirname(__file__) not in sys.path:  # tests/etcd_server.py, any import mode
    sys.path.insert(0, os.path.dirname(__file__))
from etcd_server import EtcdServer, etcd_available  # noqa: E402


@pytest.fixture(scope="session")
def etcd_server():
    if not etcd_available():
        pytest.skip("etcd binary not installed (Debian package etcd-server)")
    with EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def etcd_url(etcd_server: EtcdServer) -> str:
    return etcd_server.url


# `etcd_tls_server`: one real etcd with TLS, client certificates and auth (users root and
# podnet) for the session; `.url` is etcd+https://..., `.settings` / `.env` what a client
# presents (open_store's `etcd` argument / PODNET_ETCD_* variables).
@pytest.fixture(scope="session")
def etcd_tls_server():
    if not etcd_available():
        pytest.skip("etcd binary not installed (Debian package etcd-server)")
    with EtcdServer(tls=True, auth=True) as server:
        yield server
# --- end etcd ---------------------------------------------------------------------------


# --- podnet core (owner: lead) -----------------------------------------------------------
# `ns`: a Namespaces factory under one random prefix, all removed at teardown.
# `host_ns`: a test "host" namespace. `store_path`: a fresh SQLite store file.
# `cni_plugin`: the fast shim installed into a temp dir. `agent`: a real agent in host_ns.
# `cni`: a CniRunner execing the shim inside host_ns (with the agent running).
from podnet_fixtures import (  # noqa: E402
    Agent,
    CniRunner,
    Namespaces,
    new_prefix,
)


@pytest.fixture
def ns():
    spaces = Namespaces(new_prefix())
    try:
        yield spaces
    finally:
        spaces.remove_all()


@pytest.fixture
def host_ns(ns: Namespaces) -> str:
    return ns.add("host")


@pytest.fixture
def store_path(tmp_path) -> str:
    return str(tmp_path / "podnet.db")


@pytest.fixture(scope="session")
def cni_plugin(tmp_path_factory) -> str:
    from podnet.install import install_cni

    return install_cni(str(tmp_path_factory.mktemp("cnibin")))


@pytest.fixture
def agent(host_ns: str, store_path: str, tmp_path):
    a = Agent(host_ns, store_path, str(tmp_path / "agent.sock")).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def cni(host_ns: str, cni_plugin: str, agent: Agent) -> CniRunner:
    return CniRunner(host_ns, cni_plugin, {"PODNET_AGENT_SOCKET": agent.socket,
                                           "PODNET_STORE": agent.store})
# --- end podnet core -----------------------------------------------------------------------


# --- real container runtimes (owner: runtimes harness, see tests/runtimes.py) -------------
# `busybox_image`: a docker-archive tarball of a local busybox image (runtimes.IMAGE_REF),
# built once per session; pass it as image_tar= to runtimes.runtime_session / Containerd /
# Podman so no runtime builds its own. Runtime sessions themselves are module fixtures of
# the test files (see tests/test_runtimes_reference.py for the pattern).
@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory):
    from runtimes import build_busybox_image

    return build_busybox_image(tmp_path_factory.mktemp("busybox-image"))
# --- end real container runtimes ----------------------------------------------------------
