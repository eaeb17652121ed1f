"""The lab's etcd: one real member (Debian's etcd-server) inside the switch namespace.

Why not tests/etcd_server.py: product code cannot import tests, and the lab needs less
(fixed ports in a namespace of its own, a data dir under the lab dir) but must stop a
process it did not spawn itself (`lab down` from a later CLI call), by PID, after
checking the PID still runs etcd with this lab's data dir.

Why the tuning flags: a 10 ms heartbeat and 100 ms election timeout make a single member
elect itself at once (also after a restart) and bring etcd's minimum lease TTL down to
about one second, so lease-TTL experiments in the lab take seconds.

Why TLS with client certificates (issue 13): every lab host is on the switch's segment,
so a plain etcd lets any process in any lab namespace read, put and delete every key.
The client port demands a certificate signed by the lab's own CA (lab.pki, generated at
the first start into etcd/pki/, keys 0600); only the agents and `podnet --lab` get one.
The peer port listens on 127.0.0.1 of the switch namespace: one member needs no peers,
and nothing else can reach it. With `auth` the lab also turns on etcd's users: root and
`podnet` (random passwords in 0600 files), and the agents log in as `podnet`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Callable

from podnet.errors import STORE_FAILURE, PodnetError
from podnet.kernel import netns
from podnet.lab import procs
from podnet.lab.state import EtcdState

PEER_HOST = "127.0.0.1"


def pki_file(st: EtcdState, name: str) -> str:
    """ca.crt, server.crt/.key, client.crt/.key, podnet.password, root.password."""
    assert st.pki_dir is not None
    return os.path.join(st.pki_dir, name)


def client_settings(st: EtcdState) -> dict[str, str]:
    """The TLS files (and credentials) a client of this lab's etcd presents: the
    `etcd` argument of open_store, or the --etcd-* flags."""
    if not st.tls:
        return {}
    out = {"cacert": pki_file(st, "ca.crt"), "cert": pki_file(st, "client.crt"),
           "key": pki_file(st, "client.key")}
    if st.auth:
        out["user"] = "podnet"
        out["password"] = _read_secret(pki_file(st, "podnet.password"))
    return out


def _read_secret(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError as exc:
        raise PodnetError(STORE_FAILURE, "cannot read the lab's etcd password",
                          f"{path}: {exc.strerror or exc}") from exc


def create_pki(st: EtcdState) -> None:
    """The lab's CA, a server certificate for the switch's etcd address, a client
    certificate for agents and (with auth) the two passwords."""
    from podnet.lab import pki

    assert st.pki_dir is not None
    ca = pki.CertAuthority.create(st.pki_dir, "podnet lab etcd CA")
    ca.issue(st.pki_dir, "server", "podnet-lab-etcd", server=True, client=True,
             ips=(st.host, PEER_HOST))
    ca.issue(st.pki_dir, "client", None, client=True)
    if st.auth:
        for who in ("root", "podnet"):
            pki.write_private(pki_file(st, f"{who}.password"),
                              secrets.token_hex(16).encode() + b"\n")


class LabEtcd:
    """Start/stop the lab's etcd; `on_pid` is told the new PID (or None) to record it."""

    def __init__(self, st: EtcdState, on_pid: Callable[[int | None], None] | None = None,
                 name: str = "podnet-lab") -> None:
        self.st = st
        self.on_pid = on_pid
        self.name = name
        self._popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "etcd+https" if self.st.tls else "etcd"
        return f"{scheme}://{self.st.host}:{self.st.port}"

    @property
    def pid(self) -> int | None:
        return self.st.pid

    def command(self) -> list[str]:
        st = self.st
        client = f"{'https' if st.tls else 'http'}://{st.host}:{st.port}"
        peer = f"http://{PEER_HOST if st.tls else st.host}:{st.peer_port}"
        tls = ["--cert-file", pki_file(st, "server.crt"), "--key-file", pki_file(st, "server.key"),
               "--client-cert-auth", "--trusted-ca-file", pki_file(st, "ca.crt")
               ] if st.tls else []
        return [
            "nsenter", f"--net={netns.netns_path(self.st.netns)}",  # execs etcd: same PID
            "etcd", "--name", self.name, "--data-dir", self.st.data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new",
            "--heartbeat-interval", "10", "--election-timeout", "100",
            "--logger", "zap", "--log-outputs", "stderr", *tls,
        ]

    def running(self) -> bool:
        return self.st.pid is not None and procs.matches(self.st.pid, self.st.data_dir)

    def start(self, timeout: float = 15.0) -> int:
        """Start etcd (no-op if it runs) and wait until it answers /health."""
        if self.running():
            assert self.st.pid is not None
            return self.st.pid
        os.makedirs(os.path.dirname(self.st.data_dir), exist_ok=True)
        fresh = not os.path.exists(self.st.data_dir)
        if self.st.tls and not os.path.exists(pki_file(self.st, "client.key")):
            create_pki(self.st)
        with open(self.st.log, "ab") as log:
            try:
                self._popen = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                raise PodnetError(STORE_FAILURE, "cannot start etcd (is etcd-server "
                                  "installed?)", str(exc)) from exc
        self._set_pid(self._popen.pid)
        try:
            self.wait_healthy(timeout)
            if self.st.auth and fresh:
                self.enable_auth()
        except BaseException:
            self.stop()
            raise
        return self._popen.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the lab's etcd by its recorded PID (tolerates one already gone)."""
        procs.stop(self.st.pid, self.st.data_dir, timeout=timeout, popen=self._popen)
        self._popen = None
        self._set_pid(None)

    def _set_pid(self, pid: int | None) -> None:
        self.st.pid = pid
        if self.on_pid is not None:
            self.on_pid(pid)

    def enable_auth(self) -> None:
        """Users root and podnet, then `auth enable` (once, on a fresh data dir)."""
        import requests

        from podnet.lab import etcd_users

        st = self.st
        session = requests.Session()
        session.trust_env = False
        session.verify = pki_file(st, "ca.crt")
        session.cert = (pki_file(st, "client.crt"), pki_file(st, "client.key"))
        with session:
            netns.run_in(st.netns, lambda: etcd_users.enable_auth(
                f"https://{st.host}:{st.port}", session,
                root_password=_read_secret(pki_file(st, "root.password")),
                password=_read_secret(pki_file(st, "podnet.password"))))

    def healthy(self) -> bool:
        """etcd answers /health with true, asked from inside the switch namespace."""
        try:
            raw = netns.socket_in(self.st.netns, socket.AF_INET, socket.SOCK_STREAM)
        except (OSError, PodnetError):
            return False
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(raw)
            try:
                sock.settimeout(1.0)
                sock.connect((self.st.host, self.st.port))
                if self.st.tls:  # wrapping detaches raw: the TLS socket is closed instead
                    sock = stack.enter_context(
                        self._tls_context().wrap_socket(sock, server_hostname=self.st.host))
                sock.sendall(f"GET /health HTTP/1.0\r\nHost: {self.st.host}\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            except OSError:  # ssl.SSLError included
                return False
        head, _, body = data.partition(b"\r\n\r\n")
        with contextlib.suppress(ValueError):
            return head.split(b" ")[1:2] == [b"200"] and json.loads(body).get("health") == "true"
        return False

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=pki_file(self.st, "ca.crt"))
        ctx.load_cert_chain(pki_file(self.st, "client.crt"), pki_file(self.st, "client.key"))
        return ctx

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                raise PodnetError(STORE_FAILURE, "etcd exited during start-up",
                                  f"rc {self._popen.returncode}; log: {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise PodnetError(STORE_FAILURE, f"etcd not healthy after {timeout:.0f} s",
                          f"log: {self.log_tail()}")

    def log_tail(self, n: int = 5) -> str:
        try:
            with open(self.st.log, "rb") as fh:
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:])
