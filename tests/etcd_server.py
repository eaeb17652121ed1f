"""A real single-member etcd for tests: free ports, a temp data dir, stop/start by PID.

    with EtcdServer() as etcd:          # 127.0.0.1, ports picked at run time
        store = open_store(etcd.url)    # etcd://127.0.0.1:PORT
        etcd.stop(); ...; etcd.start()  # same ports, same data dir

    with EtcdServer(netns="pnt1a2b-h1", host="10.99.0.1"):  # inside a namespace
        ...

    with EtcdServer(tls=True, auth=True, auth_token_ttl=2) as etcd:
        store = open_store(etcd.url, etcd=etcd.settings)  # etcd+https://..., certs, login

TLS mode: a CA of the server's own (podnet.lab.pki) in its temp dir, a server
certificate for `host`, client certificates demanded (--client-cert-auth) and a client
certificate without Common Name for the tests (`settings`). Auth mode (needs TLS off or
on, either): users root and podnet (podnet.lab.etcd_users) on the first start, simple
tokens living `auth_token_ttl` seconds.

Why the tuning flags: a 10 ms heartbeat and 100 ms election timeout make a single member
elect itself at once (also after a restart) and bring etcd's minimum lease TTL down to
one second, so TTL tests stay short. Only the process this object started is ever
signalled, by its PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import requests

CLONE_NEWNET = 0x40000000


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct TCP ports that are free on host right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _in_netns(netns: str | None, fn):  # type: ignore[no-untyped-def]
    """Run fn() in a throwaway thread that has entered netns (or directly if None)."""
    if netns is None:
        return fn()
    path = netns if "/" in netns else f"/run/netns/{netns}"
    out: dict = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), path)
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    t = threading.Thread(target=run, name="etcd-netns-probe")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


class EtcdServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        netns: str | None = None,
        name: str = "podnet-test",
        data_dir: str | None = None,
        binary: str = "etcd",
        extra_args: tuple[str, ...] = (),
        tls: bool = False,
        auth: bool = False,
        auth_token_ttl: int | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.auth = auth
        self.auth_token_ttl = auth_token_ttl
        self.root_password = "root-" + os.urandom(8).hex()
        self.user = "podnet"
        self.password = "pw-" + os.urandom(8).hex()
        self._auth_done = False
        self.netns = netns
        self.name = name
        self.binary = binary
        self.extra_args = tuple(extra_args)
        if client_port is None or peer_port is None:
            if netns is None:
                picked = free_ports(2, host)
            else:  # a namespace of the test's own: the well-known ports are free
                picked = [2379, 2380]
            client_port = client_port or picked[0]
            peer_port = peer_port or picked[1]
        self.client_port = client_port
        self.peer_port = peer_port
        # The temp dir holds the log and, unless the caller gives one, the data dir.
        self._base: str | None = tempfile.mkdtemp(prefix="pnt-etcd-")
        self.data_dir = data_dir or os.path.join(self._base, "data")
        self.log_path = os.path.join(self._base, "etcd.log")
        self.proc: subprocess.Popen | None = None
        self.pki_dir = os.path.join(self._base, "pki")
        if tls:
            from podnet.lab.pki import CertAuthority

            self.ca = CertAuthority.create(self.pki_dir, "podnet test etcd CA")
            self.server_cert = self.ca.issue(self.pki_dir, "server", "podnet-test-etcd",
                                             server=True, client=True, ips=(host,))
            self.client_cert = self.ca.issue(self.pki_dir, "client", None, client=True)

    # -- addresses -------------------------------------------------------------------
    @property
    def _hostport(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self._hostport}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self._hostport}:{self.peer_port}"

    @property
    def url(self) -> str:
        """The podnet store URL."""
        scheme = "etcd+https" if self.tls else "etcd"
        return f"{scheme}://{self._hostport}:{self.client_port}"

    @property
    def settings(self) -> dict[str, str]:
        """open_store's `etcd` argument: the client certificate, and the login."""
        out = {}
        if self.tls:
            out = {"cacert": self.ca.cert, "cert": self.client_cert.cert,
                   "key": self.client_cert.key}
        if self.auth:
            out.update(user=self.user, password=self.password)
        return out

    @property
    def env(self) -> dict[str, str]:
        """The same as PODNET_ETCD_* variables (for podnet subprocesses)."""
        names = {"cacert": "PODNET_ETCD_CACERT", "cert": "PODNET_ETCD_CERT",
                 "key": "PODNET_ETCD_KEY", "user": "PODNET_ETCD_USER",
                 "password": "PODNET_ETCD_PASSWORD"}
        return {names[k]: v for k, v in self.settings.items()}

    def session(self) -> requests.Session:
        """A requests session with the client certificate (environment ignored)."""
        s = requests.Session()
        s.trust_env = False
        if self.tls:
            s.verify = self.ca.cert
            s.cert = (self.client_cert.cert, self.client_cert.key)
        return s

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self.extra_args,
        ]
        if self.tls:
            cmd += ["--cert-file", self.server_cert.cert, "--key-file", self.server_cert.key,
                    "--client-cert-auth", "--trusted-ca-file", self.ca.cert]
        if self.auth_token_ttl is not None:
            cmd += ["--auth-token", "simple", "--auth-token-ttl", str(self.auth_token_ttl)]
        if self.netns is not None:
            path = self.netns if "/" in self.netns else f"/run/netns/{self.netns}"
            # nsenter execs etcd (no --fork), so the PID we hold is etcd's own.
            cmd = ["nsenter", f"--net={path}", *cmd]
        return cmd

    # -- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> EtcdServer:
        if self.running():
            return self
        if self._base is None:
            raise RuntimeError("EtcdServer was closed")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        try:
            self.wait_healthy(timeout)
            if self.auth and not self._auth_done:
                self._enable_auth()
        except BaseException:
            self.stop()
            raise
        return self

    def _enable_auth(self) -> None:
        from podnet.lab.etcd_users import enable_auth

        with self.session() as s:
            _in_netns(self.netns, lambda: enable_auth(
                self.client_url, s, root_password=self.root_password, user=self.user,
                password=self.password))
        self._auth_done = True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> bool:
        """True when etcd answers /health with health=true (from inside its netns)."""

        def probe() -> bool:
            conn: http.client.HTTPConnection
            if self.tls:
                ctx = ssl.create_default_context(cafile=self.ca.cert)
                ctx.load_cert_chain(self.client_cert.cert, self.client_cert.key)
                conn = http.client.HTTPSConnection(self.host, self.client_port, timeout=1.0,
                                                   context=ctx)
            else:
                conn = http.client.HTTPConnection(self.host, self.client_port, timeout=1.0)
            try:
                conn.request("GET", "/health")
                resp = conn.getresponse()
                body = resp.read()
                return resp.status == 200 and json.loads(body).get("health") == "true"
            except (OSError, ValueError, http.client.HTTPException):
                return False
            finally:
                conn.close()

        return bool(_in_netns(self.netns, probe))

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"etcd exited early (rc {self.proc and self.proc.returncode});"
                                   f" log:\n{self.log_tail()}")
            if self.health():
                return
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy after {timeout} s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the etcd this object started (SIGTERM, then SIGKILL), by its PID only."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        self.proc = None

    def close(self) -> None:
        """Stop etcd and remove the temp dir (a data_dir given by the caller is kept)."""
        self.stop()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def __enter__(self) -> EtcdServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def etcd_available(binary: str = "etcd") -> bool:
    return shutil.which(binary) is not None
