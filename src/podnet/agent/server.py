"""The agent's local API: a unix socket serving CNI calls (from the shim) and JSON RPCs.

The agent keeps pyroute2 imported, the store open and drivers warm, so a CNI ADD costs
one connect plus the kernel and store work, instead of an interpreter start-up with
heavy imports. Each connection is served in its own thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from typing import Any

from podnet.agent.addressing import LeaseSource
from podnet.agent.attach import Attacher
from podnet.drivers import PodDrivers
from podnet.errors import PodnetError

log = logging.getLogger("podnet.agent")

RpcHandler = Callable[[dict[str, Any]], Any]
# A front end's handler of one CNI call: (environment, stdin) -> (exit code, stdout).
CniHandler = Callable[[dict[str, str], bytes], tuple[int, str]]


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        path: str,
        cni_handler: CniHandler,
        rpcs: Mapping[str, RpcHandler] | None = None,
    ) -> None:
        self.path = path
        self.cni_handler = cni_handler
        self.rpcs = dict(rpcs or {})
        _claim_socket_path(path)
        super().__init__(path, _Handler)
        os.chmod(path, 0o660)

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="podnet-api", daemon=True)
        thread.start()
        return thread


def _claim_socket_path(path: str) -> None:
    """Refuse if a live agent owns `path`; remove a stale socket file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise PodnetError(104, "another podnet agent is serving this socket", path)


class _Handler(socketserver.StreamRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        head = self.rfile.readline()
        if not head.strip():
            return  # a connect-and-close (readiness probe): nothing to answer
        try:
            kind, *sizes = head.decode().split()
            if kind == "CNI":
                env_len, data_len = (int(x) for x in sizes)
                env_raw = self.rfile.read(env_len)
                data = self.rfile.read(data_len)
                env = dict(
                    item.split("=", 1) for item in env_raw.decode().split("\0") if "=" in item
                )
                code, out = self.server.cni_handler(env, data)
                self.wfile.write(b"%d\n" % code + out.encode())
            elif kind == "RPC":
                (size,) = (int(x) for x in sizes)
                request = json.loads(self.rfile.read(size))
                self.wfile.write(json.dumps(self._rpc(request)).encode())
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as exc:  # noqa: BLE001 - answer, never crash the server
            log.exception("request failed")
            with contextlib.suppress(OSError):
                self.wfile.write(b"1\n" + json.dumps({"code": 199, "msg": str(exc)}).encode())

    def _rpc(self, request: dict) -> dict:
        method = request.get("method", "")
        handler = self.server.rpcs.get(method)
        if handler is None:
            return {"error": {"code": 105, "msg": f"unknown method {method!r}"}}
        try:
            return {"result": handler(request.get("params") or {})}
        except PodnetError as exc:
            return {"error": {"code": exc.code, "msg": exc.msg, "details": exc.details}}


def call(path: str, method: str, params: dict | None = None, *, timeout: float = 30.0) -> Any:
    """Call an agent RPC; raises PodnetError with the agent's error, or OSError."""
    body = json.dumps({"method": method, "params": params or {}}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"RPC %d\n" % len(body) + body)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = json.loads(b"".join(chunks))
    if "error" in answer:
        err = answer["error"]
        raise PodnetError(err.get("code", 199), err.get("msg", ""), err.get("details", ""))
    return answer["result"]


def call_cni(
    path: str, env: dict[str, str], data: bytes, *, timeout: float = 60.0
) -> tuple[int, str]:
    """Send a CNI request the way the shim does (used by `podnet pod add`)."""
    env_raw = "\0".join(f"{k}={v}" for k, v in env.items()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"CNI %d %d\n" % (len(env_raw), len(data)) + env_raw + data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\n")
    return int(head), body.decode()


class ServiceCache:
    """One Attacher per store URL (the agent's own store by default, whose overlays get
    their leases from the agent's keepers)."""

    def __init__(self, default_url: str, node: str, drivers: PodDrivers | None = None
                 ) -> None:
        self.default_url = default_url
        self.node = node
        self.drivers = drivers or PodDrivers()
        self._services: dict[str, Attacher] = {}
        self._lock = threading.Lock()
        self.default = self.get(default_url)

    def get(self, url: str, leases: LeaseSource | None = None) -> Attacher:
        from podnet.resources import open_resources

        with self._lock:
            svc = self._services.get(url)
            if svc is None:
                svc = Attacher(open_resources(url), self.node, leases=leases,
                               drivers=self.drivers)
                self._services[url] = svc
            return svc

    def use_leases(self, leases: LeaseSource) -> None:
        """CNI calls on the agent's own store take overlay leases from `leases`."""
        self.default = Attacher(self.default.resources, self.node, leases=leases,
                                drivers=self.drivers)
        with self._lock:
            self._services[self.default_url] = self.default

    def for_conf(self, conf: dict[str, Any]) -> Attacher:
        url = conf.get("store")
        return self.get(str(url)) if url else self.default
