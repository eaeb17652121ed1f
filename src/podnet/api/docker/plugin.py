"""Docker's plugin protocol: HTTP/1.1 POSTs with JSON bodies on a unix socket.

dockerd finds a plugin by name as /run/docker/plugins/NAME.sock and talks to it with Go's
net/http client (moby pkg/plugins): every call is `POST /Family.Method` with a JSON body
(empty for the handshake calls), answered with content type
`application/vnd.docker.plugins.v1+json`.

How dockerd reads an answer (moby pkg/plugins/client.go, libnetwork's remote proxies):
- status 200: the body is decoded into the method's response struct; a non-empty `Err`
  (NetworkDriver) or `Error` (IpamDriver) field fails the call as "remote: TEXT".
- any other status: only an `Err` field is read from the body (else the raw body is the
  message), as "Family.Method: TEXT"; status 404 means "not implemented" and is skipped for
  the optional calls (Program/RevokeExternalConnectivity, IPAM GetCapabilities).
So an operation that fails answers 200 with the family's error key, a request that cannot
be decoded answers 400 with both keys (Docker reads `Err` there, whatever the family), and
an unknown method answers 404.

Why a bounded pool and `Connection: close`: every connection is served to the end by one
of a fixed number of worker threads, so an idle keep-alive connection can never hold a
worker and a stalled client is cut off by the read timeout; a unix connect costs
microseconds, so closing after each answer is cheaper than a worker per idle connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from podnet.api.docker.protocol import CONTENT_TYPE
from podnet.errors import IN_USE, INVALID_CONFIG, PodnetError

log = logging.getLogger("podnet.docker")

MAX_BODY = 1 << 20  # libnetwork's largest request (CreateNetwork with options) is ~2 KB

Handler = Callable[[dict[str, Any]], dict[str, Any]]
CallObserver = Callable[[str, dict[str, Any], int, dict[str, Any]], None]


def error_key(method: str) -> str:
    """The error field of a method's family: `Error` for IpamDriver, `Err` otherwise."""
    return "Error" if method.startswith("/IpamDriver.") else "Err"


class Router:
    """Maps `/Family.Method` to a handler (request dict in, response dict out).

    `dispatch` never raises: a PodnetError from a handler becomes the family's error
    object (its text is what Docker shows the user), anything else an internal error.
    `observer`, if given, sees every call (method, request, status, answer): the test
    backends and the agent's debug log use it.
    """

    def __init__(self, routes: Mapping[str, Handler],
                 validate: Callable[[str, dict[str, Any]], None] | None = None,
                 observer: CallObserver | None = None) -> None:
        self.routes = dict(routes)
        self.validate = validate
        self.observer = observer

    def dispatch(self, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        request: dict[str, Any] = {}
        status, answer = self._dispatch(method, body, request)
        if self.observer is not None:
            try:
                self.observer(method, request, status, answer)
            except Exception:  # noqa: BLE001 - an observer must not break the answer
                log.exception("call observer failed")
        return status, answer

    def _dispatch(self, method: str, body: bytes,
                  request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        handler = self.routes.get(method)
        if handler is None:
            return HTTPStatus.NOT_FOUND, {"Err": f"podnet does not implement {method}"}
        try:
            request.update(decode_body(body))
            if self.validate is not None:
                self.validate(method, request)
        except PodnetError as exc:
            text = f"{method[1:]}: {exc}"
            return HTTPStatus.BAD_REQUEST, {"Err": text, "Error": text}
        try:
            return HTTPStatus.OK, handler(request)
        except PodnetError as exc:
            return HTTPStatus.OK, {error_key(method): str(exc)}
        except Exception as exc:  # noqa: BLE001 - answer, never crash the server
            log.exception("%s failed", method)
            text = f"podnet internal error in {method[1:]}: {type(exc).__name__}: {exc}"
            return HTTPStatus.OK, {error_key(method): text}


def decode_body(body: bytes) -> dict[str, Any]:
    """A request body as a dict: empty (the handshake calls) is {}; else a JSON object."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PodnetError(INVALID_CONFIG, "the request body is not valid JSON", str(exc)) from exc
    if value is None:
        return {}  # Go encodes a nil request pointer as `null`
    if not isinstance(value, dict):
        raise PodnetError(INVALID_CONFIG, "the request body must be a JSON object",
                          f"got {type(value).__name__}")
    return value


class _RequestHandler(BaseHTTPRequestHandler):
    server: PluginServer
    protocol_version = "HTTP/1.1"
    server_version = "podnet"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)  # each read and write

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.close_connection = True
        try:
            body = self._read_body()
        except PodnetError as exc:
            text = str(exc)
            self._answer(HTTPStatus.BAD_REQUEST, {"Err": text, "Error": text})
            return
        except (TimeoutError, OSError):
            return  # the client stalled or went away: nothing to answer
        status, answer = self.server.router.dispatch(self.path.split("?", 1)[0], body)
        self._answer(status, answer)

    def _not_post(self) -> None:
        self.close_connection = True
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED,
                     {"Err": f"plugin calls are POST requests, not {self.command}"})

    do_GET = do_PUT = do_DELETE = do_HEAD = do_PATCH = _not_post  # noqa: N815

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length") or "0"
        try:
            size = int(raw)
        except ValueError as exc:
            raise PodnetError(INVALID_CONFIG, "invalid Content-Length", raw) from exc
        if size < 0 or size > MAX_BODY:
            raise PodnetError(INVALID_CONFIG, "request body too large or negative", raw)
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError as exc:
                raise PodnetError(INVALID_CONFIG, "malformed chunked body") from exc
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers
                return bytes(data)
            if len(data) + size > MAX_BODY:
                raise PodnetError(INVALID_CONFIG, "request body too large")
            data += self.rfile.read(size)
            self.rfile.readline(8)  # CRLF after the chunk

    def _answer(self, status: int, answer: dict[str, Any]) -> None:
        payload = json.dumps(answer).encode()
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("docker plugin: " + format, *args)


class PluginServer(socketserver.UnixStreamServer):
    """Serve a Router on a unix socket with at most `workers` connections at a time.

    The socket is claimed with `claim_socket` (a live one is refused with code 104, a stale
    one replaced) and created with `mode`. Use `serve_in_thread()` and `close()`, or a
    `with` block.
    """

    def __init__(self, path: str, router: Router, *, workers: int = 8,
                 read_timeout: float = 10.0, mode: int = 0o660) -> None:
        self.path = os.path.abspath(path)
        self.router = router
        self.read_timeout = read_timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="podnet-docker")
        self._slots = threading.BoundedSemaphore(workers * 2)  # running + waiting
        self._thread: threading.Thread | None = None
        self._inode = -1
        claim_socket(self.path)
        # Bind under a temporary name, set the mode, then rename into place: the socket
        # never exists at `path` with the process umask's mode.
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        super().__init__(tmp, _RequestHandler, bind_and_activate=False)
        try:
            self.server_bind()
            os.chmod(tmp, mode)
            os.rename(tmp, self.path)
            self._inode = os.stat(self.path).st_ino
            self.server_address = self.path
            self.server_activate()
        except BaseException:
            self.socket.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # blocks accepting while the pool and its queue are full
        try:
            self._pool.submit(self._work, request, client_address)
        except RuntimeError:  # the pool is shut down
            self._slots.release()
            self.shutdown_request(request)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("docker plugin connection failed")

    def serve_in_thread(self) -> PluginServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="podnet-docker-accept", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, finish running calls, remove the socket file (if still ours)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self._pool.shutdown(wait=True)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self.server_close()

    def __enter__(self) -> PluginServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def claim_socket(path: str) -> None:
    """Make `path` free for a new plugin socket: refuse a live one (104), drop a stale one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise PodnetError(IN_USE, "the plugin socket path exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a stale socket of a process that died
        return
    finally:
        probe.close()
    raise PodnetError(IN_USE, "another server is already listening on this plugin socket",
                      path)

