"""The etcd store over TLS with client certificates and etcd's password auth (issue 13).

Every server here is a real etcd (tests/etcd_server.py) with a CA of its own; refusals
are checked as podnet reports them (one PodnetError with code 7 or 11 naming the
endpoint, one line from the CLI) and, where it matters, with a raw HTTPS request as an
independent witness. The store contract suite itself also runs on a TLS etcd with auth
(tests/test_store_contract.py, `etcd-tls`).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
import uuid

import pytest
from etcd_server import EtcdServer, etcd_available
from podnet_fixtures import new_prefix

from podnet.errors import INVALID_CONFIG, TRY_AGAIN_LATER, PodnetError
from podnet.lab.pki import CertAuthority
from podnet.store import Event, open_store

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed")

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
TOKEN_TTL = 1  # seconds a simple token lives unused (etcd --auth-token-ttl)


@pytest.fixture(scope="module")
def secure() -> EtcdServer:
    """TLS, client certificates demanded, auth on, tokens expiring after 1 s idle."""
    with EtcdServer(tls=True, auth=True, auth_token_ttl=TOKEN_TTL) as server:
        yield server


@pytest.fixture(scope="module")
def tls_only() -> EtcdServer:
    """TLS and client certificates, no auth."""
    with EtcdServer(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, str]:
    """A CA that signed nothing of the servers', and a client certificate of its own."""
    d = str(tmp_path_factory.mktemp("foreign-pki"))
    ca = CertAuthority.create(d, "foreign CA")
    client = ca.issue(d, "client", None, client=True)
    return {"cacert": ca.cert, "cert": client.cert, "key": client.key}


@pytest.fixture
def p() -> str:
    return f"/pnt-tls/{uuid.uuid4().hex[:8]}/"


def without(settings: dict[str, str], *keys: str) -> dict[str, str]:
    return {k: v for k, v in settings.items() if k not in keys}


def refused(url: str, settings: dict[str, str]) -> PodnetError:
    """The error of a read with these settings (and proof that nothing was read)."""
    with pytest.raises(PodnetError) as info, open_store(url, etcd=settings) as store:
        store.get("/podnet/networks/x")
    assert "Traceback" not in str(info.value)
    return info.value


def podnet(*args: str, env: dict[str, str] | None = None, netns: str | None = None
           ) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PODNET_ETCD_")}
    clean["PYTHONPATH"] = os.pathsep.join(x for x in (SRC, os.environ.get("PYTHONPATH")) if x)
    cmd = [sys.executable, "-m", "podnet", *args]
    if netns:
        cmd = ["nsenter", f"--net=/run/netns/{netns}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def raw_range(server: EtcdServer, key: str, token: str | None = None) -> int:
    """HTTP status of a raw range request with the test's client certificate."""
    with server.session() as s:
        headers = {"Authorization": token} if token else {}
        return s.post(server.client_url + "/v3/kv/range", headers=headers, timeout=5,
                      json={"key": base64.b64encode(key.encode()).decode()}).status_code


# -- TLS ---------------------------------------------------------------------------------
def test_tls_round_trip_and_watch(tls_only: EtcdServer, p: str) -> None:
    with open_store(tls_only.url, etcd=tls_only.settings) as store, store.watch(p) as w:
        rev = store.put(p + "a", {"v": 1}, ttl=5)
        assert store.get(p + "a").value == {"v": 1}
        assert w.next_batch(timeout=5) == [Event("put", p + "a", {"v": 1}, rev)]
        assert repr(store) == f"EtcdStore({tls_only.url})"


def test_client_without_certificate_is_refused(tls_only: EtcdServer) -> None:
    err = refused(tls_only.url, without(tls_only.settings, "cert", "key"))
    assert err.code == INVALID_CONFIG
    assert f"127.0.0.1:{tls_only.client_port}" in err.msg and "TLS handshake refused" in err.msg
    assert "requires a client certificate" in err.details


def test_client_certificate_of_another_ca_is_refused(tls_only: EtcdServer, foreign) -> None:
    settings = dict(tls_only.settings, cert=foreign["cert"], key=foreign["key"])
    err = refused(tls_only.url, settings)
    assert err.code == INVALID_CONFIG and "TLS handshake refused" in err.msg
    assert f"refused the client certificate --etcd-cert {foreign['cert']}" in err.details


def test_untrusted_server_certificate_is_refused(tls_only: EtcdServer, foreign) -> None:
    err = refused(tls_only.url, dict(tls_only.settings, cacert=foreign["cacert"]))
    assert err.code == INVALID_CONFIG
    assert err.msg == f"etcd 127.0.0.1:{tls_only.client_port}: server certificate not trusted"
    assert foreign["cacert"] in err.details
    # Without --etcd-cacert the server is checked against the default bundle: no trust.
    err = refused(tls_only.url, without(tls_only.settings, "cacert"))
    assert "not trusted" in err.msg and "default CA bundle" in err.details


def test_certificate_for_another_address_is_refused(tls_only: EtcdServer) -> None:
    """The server certificate names 127.0.0.1 only: reached as localhost it is refused."""
    url = f"etcd+https://localhost:{tls_only.client_port}"
    err = refused(url, tls_only.settings)
    assert err.code == INVALID_CONFIG and "not trusted" in err.msg
    assert "localhost" in err.msg


def test_plain_client_cannot_read_a_tls_etcd(tls_only: EtcdServer) -> None:
    err = refused(tls_only.url.replace("etcd+https://", "etcd://"), {})
    assert err.code == TRY_AGAIN_LATER and "use an etcd+https:// URL" in err.details


def test_tls_client_against_a_plain_etcd(etcd_url: str, tls_only: EtcdServer) -> None:
    err = refused(etcd_url.replace("etcd://", "etcd+https://"), tls_only.settings)
    assert err.code == INVALID_CONFIG and "does not speak TLS" in err.msg, err.details


@pytest.mark.parametrize("change, message", [
    ({"cert": None}, "--etcd-key needs --etcd-cert"),
    ({"key": None}, "--etcd-cert needs --etcd-key"),
    ({"cacert": "/nonexistent/ca.pem"}, "--etcd-cacert /nonexistent/ca.pem: No such file"),
    ({"key": "/nonexistent/k.pem"}, "--etcd-key /nonexistent/k.pem: No such file"),
    ({"cert": "CACERT"}, "not a matching PEM certificate and key"),
    ({"cacert": "KEY"}, "not a PEM CA certificate"),
    ({"user": "podnet"}, "--etcd-user needs --etcd-password"),
])
def test_bad_settings_fail_at_open(tls_only: EtcdServer, change: dict, message: str) -> None:
    settings = dict(tls_only.settings)
    for key, value in change.items():
        value = {"CACERT": settings["cacert"], "KEY": settings["key"]}.get(value, value)
        if value is None:
            settings.pop(key)
        else:
            settings[key] = value
    with pytest.raises(PodnetError) as info:
        open_store(tls_only.url, etcd=settings)
    assert info.value.code == INVALID_CONFIG and message in str(info.value)


def test_tls_settings_with_a_plain_url_are_refused(etcd_url: str, tls_only: EtcdServer
                                                   ) -> None:
    with pytest.raises(PodnetError) as info:
        open_store(etcd_url, etcd=tls_only.settings)
    assert info.value.code == INVALID_CONFIG and "etcd+https://" in info.value.details


# -- auth ---------------------------------------------------------------------------------
def test_right_password_works_wrong_one_is_refused(secure: EtcdServer, p: str) -> None:
    with open_store(secure.url, etcd=secure.settings) as store:
        rev = store.put(p + "k", {"v": 1})
        assert store.get(p + "k").revision == rev
    err = refused(secure.url, dict(secure.settings, password="wrong"))
    assert err.code == INVALID_CONFIG
    assert err.msg == (f"etcd 127.0.0.1:{secure.client_port}: authentication failed for "
                       "user 'podnet'")
    err = refused(secure.url, dict(secure.settings, user="nobody"))
    assert "authentication failed for user 'nobody'" in err.msg
    err = refused(secure.url, without(secure.settings, "user", "password"))
    assert err.code == INVALID_CONFIG and "requires authentication" in err.msg
    assert raw_range(secure, p + "k") == 400  # the witness: no token, no read


def test_credentials_for_an_etcd_without_auth_are_not_an_error(tls_only: EtcdServer,
                                                                p: str) -> None:
    """As etcd's own client does: "authentication is not enabled" means no token."""
    with open_store(tls_only.url, etcd=dict(tls_only.settings, user="u", password="x")) as st:
        rev = st.put(p + "k", {"v": 1})
        assert st.get(p + "k").revision == rev


def test_user_without_permission_is_refused(secure: EtcdServer) -> None:
    with secure.session() as s:
        root = s.post(secure.client_url + "/v3/auth/authenticate", timeout=10, json={
            "name": "root", "password": secure.root_password}).json()["token"]
        for path, body in (("/v3/auth/user/add", {"name": "limited", "password": "pw1"}),):
            assert s.post(secure.client_url + path, json=body, timeout=10,
                          headers={"Authorization": root}).status_code == 200
    err = refused(secure.url, dict(secure.settings, user="limited", password="pw1"))
    assert err.code == INVALID_CONFIG and "permission denied for user 'limited'" in err.msg


def test_token_expiry_logs_in_again(secure: EtcdServer, p: str) -> None:
    with open_store(secure.url, etcd=secure.settings) as store:
        rev = store.put(p + "k", {"v": 1})
        old = store._auth._token  # type: ignore[attr-defined]
        assert old and raw_range(secure, p + "k", old) == 200
        # A simple token expires after TOKEN_TTL seconds unused, and any probe with it
        # would renew it: the wait is the condition (etcd sweeps tokens every second).
        time.sleep(TOKEN_TTL + 2.0)
        assert raw_range(secure, p + "k", old) == 401  # witness: the token is dead
        assert store.get(p + "k").revision == rev  # the same store object, logged in again
        new = store._auth._token  # type: ignore[attr-defined]
        assert new and new != old
        assert store.put(p + "k", {"v": 2}, revision=rev) > rev


def test_watch_logs_in_again_when_reopened_with_a_dead_token(
    secure: EtcdServer, p: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle stream is reopened after WATCH_IDLE; by then its token has expired, etcd
    cancels the new stream for it, the watch logs in again: no error, no event lost."""
    from podnet.store import etcd

    monkeypatch.setattr(etcd, "WATCH_IDLE", TOKEN_TTL + 2.5)
    with open_store(secure.url, etcd=secure.settings) as reader, \
            open_store(secure.url, etcd=secure.settings) as writer, reader.watch(p) as w:
        old = reader._auth._token  # type: ignore[attr-defined]
        r1 = writer.put(p + "a", {"v": 1})
        assert w.next_batch(timeout=5) == [Event("put", p + "a", {"v": 1}, r1)]
        deadline = time.monotonic() + 20
        while reader._auth._token in (old, None) and time.monotonic() < deadline:  # type: ignore[attr-defined]
            assert w.next_batch(timeout=0.2) == []
        assert reader._auth._token not in (old, None)  # type: ignore[attr-defined]
        r2 = writer.put(p + "a", {"v": 2})
        got = []
        while len(got) < 1 and time.monotonic() < deadline:
            got += w.next_batch(timeout=0.5)
        assert got == [Event("put", p + "a", {"v": 2}, r2)]


def test_etcd_restart_forgets_tokens_store_logs_in_again(p: str) -> None:
    with EtcdServer(tls=True, auth=True) as server, \
            open_store(server.url, etcd=server.settings) as store:
        rev = store.put(p + "k", {"v": 1})
        old = store._auth._token  # type: ignore[attr-defined]
        server.stop()
        with pytest.raises(PodnetError) as info:
            store.get(p + "k")
        assert info.value.code == TRY_AGAIN_LATER
        server.start()
        assert raw_range(server, p + "k", old) == 401  # simple tokens do not survive
        assert store.get(p + "k").revision == rev
        assert store._auth._token != old  # type: ignore[attr-defined]


# -- configuration: flags and environment -------------------------------------------------
def test_cli_flags_and_environment(secure: EtcdServer) -> None:
    s = secure.settings
    flags = ["--store", secure.url, "--etcd-cacert", s["cacert"], "--etcd-cert", s["cert"],
             "--etcd-key", s["key"], "--etcd-user", s["user"], "--etcd-password", s["password"]]
    name = "tls" + uuid.uuid4().hex[:6]
    proc = podnet(*flags, "network", "create", name, "--subnet", "10.77.0.0/24")
    assert proc.returncode == 0, proc.stderr
    listed = podnet("--store", secure.url, "network", "ls", "--json", env=secure.env)
    assert listed.returncode == 0, listed.stderr
    assert name in [n["name"] for n in json.loads(listed.stdout)]
    # a flag wins over the environment
    one_line_error(podnet("--store", secure.url, "--etcd-password", "wrong", "network", "ls",
                          env=secure.env),
                   "authentication failed for user 'podnet'", str(secure.client_port))
    one_line_error(podnet("--store", secure.url, "network", "ls",
                          env=without(secure.env, "PODNET_ETCD_CERT", "PODNET_ETCD_KEY")),
                   "TLS handshake refused", "--etcd-cert")
    one_line_error(podnet("--store", secure.url, "network", "ls",
                          env=without(secure.env, "PODNET_ETCD_CACERT")), "not trusted")
    one_line_error(podnet("--store", secure.url, "--etcd-cert", s["cert"], "network", "ls"),
                   "--etcd-cert needs --etcd-key")


def test_agent_over_tls_and_auth(ns, tmp_path) -> None:
    """A real agent in a host namespace, its etcd beside it (TLS + auth): it serves with
    the right settings and exits with one line without a client certificate."""
    host = ns.add("host")
    with EtcdServer(netns=host, host="127.0.0.1", tls=True, auth=True) as server:
        sock = str(tmp_path / "a.sock")
        proc = podnet("--store", server.url, "--socket", sock, "agent", "--node-name", "x",
                      env=without(server.env, "PODNET_ETCD_CERT", "PODNET_ETCD_KEY"),
                      netns=host)
        one_line_error(proc, "TLS handshake refused", "127.0.0.1:2379")
        one_line_error(podnet("--store", server.url, "--socket", sock, "agent",
                              env=dict(server.env, PODNET_ETCD_PASSWORD="bad"), netns=host),
                       "authentication failed")
        agent = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{host}", sys.executable, "-m", "podnet",
             "--store", server.url, "--socket", sock, "agent", "--node-name", "x"],
            env={**os.environ, **server.env, "PYTHONPATH": SRC}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            from podnet.agent.server import call

            deadline = time.monotonic() + 20
            answer = None
            while answer is None and time.monotonic() < deadline:
                assert agent.poll() is None, agent.stdout.read().decode()  # type: ignore[union-attr]
                try:
                    answer = call(sock, "ping", timeout=2.0)
                except OSError:
                    time.sleep(0.05)
            assert answer == {"node": "x", "store": server.url}
        finally:
            agent.terminate()
            agent.wait(10)


# -- the lab ------------------------------------------------------------------------------
LAB_PROBE = r"""
import base64, json, sys, requests
url, cacert, cert, key = sys.argv[1:5]
body = {"key": base64.b64encode(b"/podnet/networks/labnet").decode()}
out = {}
def attempt(name, scheme, **kw):
    s = requests.Session(); s.trust_env = False
    for k, v in kw.items():
        setattr(s, k, v)
    try:
        r = s.post(f"{scheme}://{url}/v3/kv/range", json=body, timeout=3)
        out[name] = [r.status_code, "kvs" in r.text]
    except requests.RequestException as exc:
        out[name] = type(exc).__name__
attempt("plain", "http")
attempt("no_cert", "https", verify=cacert)
attempt("cert_no_password", "https", verify=cacert, cert=(cert, key))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_lab_etcd_over_tls_with_auth() -> None:
    from podnet.lab import Lab, Topo

    name = new_prefix()
    with Lab(Topo(hosts=2, pods_per_host=1), backend="vxlan", store="etcd", name=name,
             etcd_auth=True) as lab:
        assert lab.store_url == "etcd+https://172.30.1.254:2379"
        assert [r for r in lab.ping_all() if not r.ok] == []
        st = lab.state.etcd
        assert st is not None and st.tls and st.auth and st.pki_dir
        assert stat.S_IMODE(os.stat(st.pki_dir).st_mode) == 0o700
        for f in ("ca.key", "server.key", "client.key", "podnet.password", "root.password"):
            assert stat.S_IMODE(os.stat(os.path.join(st.pki_dir, f)).st_mode) == 0o600, f
        # agents: certificate flags on the command line, the password never
        for h in lab.hosts:
            pid = lab.agent_pid(h.name)
            assert pid is not None
            argv = open(f"/proc/{pid}/cmdline", "rb").read().decode()
            assert "--etcd-cacert=" in argv and "--etcd-cert=" in argv
            assert lab.store_settings["password"] not in argv
        # from a lab host: no plain HTTP, no certificate-less TLS, no read without login
        s = lab.store_settings
        probe = lab.exec("h1", [sys.executable, "-c", LAB_PROBE, "172.30.1.254:2379",
                                s["cacert"], s["cert"], s["key"]])
        assert probe.returncode == 0, probe.stderr
        out = json.loads(probe.stdout)
        assert out["plain"] == "ConnectionError"
        assert out["no_cert"] in ("SSLError", "ConnectionError")
        assert out["cert_no_password"] == [400, False]
        # `podnet --lab` gets the lab's certificates and password by itself
        listed = podnet("--lab", name, "network", "ls", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [n["name"] for n in json.loads(listed.stdout)] == ["labnet"]
        one_line_error(podnet("--lab", name, "--etcd-password", "wrong", "network", "ls"),
                       "authentication failed for user 'podnet'", "172.30.1.254:2379")
        # etcd restarted: its tokens are gone, the agents log in again by themselves
        assert lab.etcd is not None
        lab.etcd.stop()
        lab.etcd.start()
        pod = lab.add_pod("h2")
        assert pod.ip and all(r.ok for r in lab.ping_all(pairs=[("h1-p1", pod.name)]))
