"""The etcd v3 store, spoken through etcd's grpc-gateway JSON API (/v3/...) via etcd3gw.

Why this shape:
- Every write is one etcd transaction, so compare-and-put (`revision=N`, compared with
  the key's mod_revision) and create-if-absent (`revision=0`, create_revision == 0) are
  atomic on the server; a lost compare raises Conflict.
- A TTL is an etcd lease granted for that write and attached to the key; a later write
  with a TTL grants a fresh lease, a write without one detaches it. etcd deletes the key
  when the lease expires and logs an ordinary delete event, which is what watchers see.
  etcd leases count whole seconds (a TTL is rounded up) and etcd notices expiry up to
  about half a second late.
- A CNI ADD must fail fast when etcd is down: every request has short connect and read
  timeouts, and every failure to reach etcd becomes StoreUnavailable (CNI code 11). The
  HTTP session reconnects by itself, so the same object works again once etcd is back.
  With several endpoints a request that could not even connect moves on to the next one.
- etcd3gw's own Watcher cannot report a broken stream or compaction and leaves its
  thread behind, so the watch here reads the gateway's streaming response in its own
  thread: it resumes after the last delivered revision when the stream ends or stays
  idle too long (which also notices a silently vanished server), reports compaction and
  unreachable etcd as StoreUnavailable, and close() shuts the socket and joins the thread.
- TLS and auth: `etcd+https://` selects TLS; the CA, client certificate and user/password
  come from flags/environment (etcd_tls.py), never from the URL. etcd3gw has TLS but no
  password auth, so every request goes through `_post` here, which adds the token header
  of etcd_auth.TokenAuth and logs in again once when etcd refuses the token. Sessions
  ignore the environment (trust_env off): requests would otherwise let
  REQUESTS_CA_BUNDLE override the configured CA and send etcd traffic to HTTP proxies.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import math
import queue
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as etcd_exc
from etcd3gw.client import Etcd3Client
from urllib3.exceptions import ConnectTimeoutError

from podnet.errors import INVALID_CONFIG, STORE_FAILURE, Conflict, PodnetError, StoreUnavailable
from podnet.store.base import Entry, Event, Store, Watch
from podnet.store.etcd_auth import TokenAuth, TokenRejected, auth_failure, error_text
from podnet.store.etcd_tls import (
    EtcdSecurity,
    answers_plain_http,
    find_ssl_error,
    handshake_cut,
    tls_failure,
)

DEFAULT_PORT = 2379
# Connect and read timeouts of every request (seconds).
DEFAULT_TIMEOUT = 2.0
# Read timeout of a login: etcd checks the password with bcrypt (~50 ms of CPU each), so
# many clients logging in at once on a busy machine queue for seconds.
LOGIN_TIMEOUT = 15.0
# Logins per request: a refused token is renewed and the request repeated.
AUTH_ATTEMPTS = 3
# A watch stream silent this long is reopened (proves etcd is still there).
WATCH_IDLE = 10.0
_API_PATH = "/v3/"  # etcd >= 3.4; skips etcd3gw's /version discovery round trip
PLAIN, TLS = "etcd://", "etcd+https://"
SCHEMES = (PLAIN, TLS)

T = TypeVar("T")


# -- encoding ----------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key(key: str) -> str:
    return _b64(key.encode("utf-8"))


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (b"\\0": no end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _dump(value: dict) -> str:
    return _b64(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def _entry(kv: dict) -> Entry:
    key = base64.b64decode(kv["key"]).decode("utf-8")
    value = json.loads(base64.b64decode(kv.get("value", "")) or b"null")
    return Entry(key, value, int(kv["mod_revision"]))


def _event(ev: dict) -> Event:
    kv = ev["kv"]
    key = base64.b64decode(kv["key"]).decode("utf-8")
    rev = int(kv["mod_revision"])
    if ev.get("type") == "DELETE":
        return Event("delete", key, None, rev)
    return Event("put", key, json.loads(base64.b64decode(kv.get("value", "")) or b"null"), rev)


def _unreachable_before_sending(exc: BaseException) -> bool:
    """True when a request failed while connecting, so it never reached etcd."""
    ctx = exc if isinstance(exc, requests.RequestException) else exc.__context__
    if isinstance(ctx, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(ctx, requests.ConnectionError) and ctx.args:
        # urllib3's NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError
        return isinstance(getattr(ctx.args[0], "reason", None), ConnectTimeoutError)
    return False


def parse_url(url: str) -> tuple[bool, list[tuple[str, int]]]:
    """(TLS?, endpoints) of etcd://host:port[,host:port] or etcd+https://..."""
    if url.startswith(TLS):
        return True, _parse_endpoints(url, TLS)
    if url.startswith(PLAIN):
        return False, _parse_endpoints(url, PLAIN)
    raise PodnetError(STORE_FAILURE, "bad etcd URL", f"{url}: use etcd:// or etcd+https://")


def _parse_endpoints(url: str, scheme: str) -> list[tuple[str, int]]:
    rest = url.removeprefix(scheme).split("/", 1)[0].split("?", 1)[0]
    out = []
    for part in rest.split(","):
        part = part.strip()
        if not part:
            continue
        parsed = urlsplit("//" + part)
        if not parsed.hostname:
            raise PodnetError(STORE_FAILURE, "bad etcd URL", url)
        try:
            port = parsed.port or DEFAULT_PORT
        except ValueError as exc:
            raise PodnetError(STORE_FAILURE, "bad etcd URL", url) from exc
        out.append((parsed.hostname, port))
    if not out:
        raise PodnetError(STORE_FAILURE, "bad etcd URL", url)
    return out


# -- the store ---------------------------------------------------------------------
class EtcdStore(Store):
    def __init__(
        self, endpoints: list[tuple[str, int]], *, timeout: float = DEFAULT_TIMEOUT,
        tls: bool = False, security: EtcdSecurity | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.tls = tls
        self.security = security or EtcdSecurity()
        self.security.check(tls, self.url)
        self._auth = (TokenAuth(self.security.user, self.security.password)
                      if self.security.user and self.security.password else None)
        # (connect, read) timeouts: requests takes a pair, etcd3gw's hint says a number
        self._clients = [
            Etcd3Client(host=h, port=p, timeout=(timeout, timeout),  # type: ignore[arg-type]
                        api_path=_API_PATH, protocol="https" if tls else "http",
                        session=self.new_session())
            for h, p in self.endpoints
        ]
        self._login_clients = [  # the same sessions, a longer read timeout
            Etcd3Client(host=c.host, port=c.port,
                        timeout=(timeout, LOGIN_TIMEOUT),  # type: ignore[arg-type]
                        api_path=_API_PATH, protocol=c.protocol, session=c.session)
            for c in self._clients
        ]
        self._current = 0
        self._watches: weakref.WeakSet[_EtcdWatch] = weakref.WeakSet()

    @classmethod
    def from_url(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 security: EtcdSecurity | None = None) -> EtcdStore:
        """etcd://host:port[,host:port...] or etcd+https://... (port defaults to 2379;
        [v6]:port works)."""
        tls, endpoints = parse_url(url)
        return cls(endpoints, timeout=timeout, tls=tls, security=security)

    @property
    def url(self) -> str:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return (TLS if self.tls else PLAIN) + hosts

    def __repr__(self) -> str:
        return f"EtcdStore({self.url})"

    def new_session(self) -> requests.Session:
        """A session with this store's TLS settings, deaf to the environment."""
        session = requests.Session()
        session.trust_env = False
        for name, value in self.security.session_options(self.tls).items():
            setattr(session, name, value)
        return session

    # -- transport -----------------------------------------------------------------
    def _call(self, fn: Callable[[Etcd3Client, dict[str, str]], T]) -> T:
        """Run fn(client, headers) with the auth token (logging in first, and again if
        etcd refuses the token or, mid-change of its auth settings, the login); see
        _send for failover and errors."""
        if self._auth is None:
            return self._send(fn, {})
        last: TokenRejected | None = None
        for _ in range(AUTH_ATTEMPTS):
            headers: dict[str, str] = {}
            try:
                headers = self._auth.headers(self._login)
                return self._send(fn, headers)
            except TokenRejected as exc:
                last = exc
                self._auth.discard(headers)
        raise PodnetError(INVALID_CONFIG, f"etcd {self._where()} keeps refusing the auth "
                          f"token of user {self._auth.user!r}", str(last)) from last

    def _login(self, payload: dict) -> dict:
        return self._send(lambda c, h: c.post(c.get_url("/auth/authenticate"), json=payload),
                          {}, login=True)

    def _where(self, idx: int | None = None) -> str:
        eps = self.endpoints if idx is None else [self.endpoints[idx]]
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in eps)

    def _send(self, fn: Callable[[Etcd3Client, dict[str, str]], T], headers: dict[str, str],
              *, login: bool = False) -> T:
        """Run fn on the current endpoint; map failures to podnet errors; fail over."""
        start = self._current
        clients = self._login_clients if login else self._clients
        n = len(clients)
        last: BaseException | None = None
        for i in range(n):
            idx = (start + i) % n
            client = clients[idx]
            try:
                result = self._attempt(fn, client, headers)
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                    etcd_exc.InternalServerError, requests.RequestException) as exc:
                probe = functools.partial(answers_plain_http, client.host, client.port,
                                          self.timeout) if self.tls else None
                tls_error = tls_failure(exc, self._where(idx), self.security, probe)
                if tls_error is not None:
                    raise tls_error from exc
                last = exc
                # Prefer another endpoint next time; retry right away only when this
                # request certainly never reached etcd (it could have been applied).
                self._current = (idx + 1) % n
                if _unreachable_before_sending(exc):
                    continue
                break
            except etcd_exc.Etcd3Exception as exc:
                message = error_text(exc.detail_text or str(exc))
                failure = auth_failure(message, self._where(idx),
                                       self._auth.user if self._auth else None)
                if failure is not None:
                    raise failure from exc
                raise PodnetError(STORE_FAILURE, "etcd request failed", message) from exc
            self._current = idx
            return result
        detail = getattr(last, "detail_text", None) or str(last)
        hint = ""
        if not self.tls and "RemoteDisconnected" in detail:
            hint = " (if etcd serves TLS, use an etcd+https:// URL)"
        raise StoreUnavailable(f"etcd {self._where()}: {type(last).__name__}: {detail}{hint}"
                               ) from last

    @staticmethod
    def _attempt(fn: Callable[[Etcd3Client, dict[str, str]], T], client: Etcd3Client,
                 headers: dict[str, str]) -> T:
        """fn once, or twice when the first try's TLS handshake was cut short (a refused
        client certificate looks like that, but so may a server going down; the request
        never reached etcd, so repeating it is safe)."""
        try:
            return fn(client, headers)
        except (etcd_exc.ConnectionFailedError, requests.RequestException) as exc:
            if not handshake_cut(find_ssl_error(exc)):
                raise
        return fn(client, headers)

    def _post(self, path: str, payload: dict) -> dict:
        return self._call(lambda c, h: c.post(c.get_url(path), json=payload, headers=h))

    # -- reads -----------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        res = self._post("/kv/range", {"key": _key(key)})
        kvs = res.get("kvs") or []
        return _entry(kvs[0]) if kvs else None

    def list(self, prefix: str) -> list[Entry]:
        raw = prefix.encode("utf-8")
        payload = {
            "key": _b64(raw or b"\0"),
            "range_end": _b64(_prefix_end(raw)),
            "sort_order": "ASCEND",
            "sort_target": "KEY",
        }
        res = self._post("/kv/range", payload)
        return [_entry(kv) for kv in res.get("kvs") or []]

    def revision(self) -> int:
        res = self._post("/kv/range", {"key": _b64(b"\0"), "count_only": True})
        return int(res["header"]["revision"])

    # -- writes ----------------------------------------------------------------------
    @staticmethod
    def _compare(key: str, revision: int | None) -> list[dict]:
        if revision is None:
            return []
        if revision == 0:
            return [{"key": _key(key), "result": "EQUAL", "target": "CREATE",
                     "create_revision": 0}]
        return [{"key": _key(key), "result": "EQUAL", "target": "MOD",
                 "mod_revision": int(revision)}]

    def put(
        self, key: str, value: dict, *, revision: int | None = None, ttl: float | None = None
    ) -> int:
        request: dict[str, Any] = {"key": _key(key), "value": _dump(value)}
        lease_id: int | None = None
        if ttl is not None:
            seconds = max(1, math.ceil(ttl))
            lease_id = int(self._post("/lease/grant", {"TTL": seconds, "ID": 0})["ID"])
            request["lease"] = str(lease_id)
        txn = {
            "compare": self._compare(key, revision),
            "success": [{"request_put": request}],
            "failure": [],
        }
        res = self._post("/kv/txn", txn)
        if not res.get("succeeded"):
            if lease_id is not None:
                self._revoke(lease_id)
            raise Conflict(key)
        return int(res["header"]["revision"])

    def _revoke(self, lease_id: int) -> None:
        """Best effort: an unused lease would otherwise linger until its TTL runs out."""
        with contextlib.suppress(PodnetError):
            self._post("/lease/revoke", {"ID": str(lease_id)})

    def delete(self, key: str, *, revision: int | None = None) -> bool:
        txn = {
            "compare": self._compare(key, revision),
            "success": [{"request_delete_range": {"key": _key(key)}}],
            "failure": [],
        }
        res = self._post("/kv/txn", txn)
        if not res.get("succeeded"):
            raise Conflict(key)
        responses = res.get("responses") or [{}]
        deleted = responses[0].get("response_delete_range", {}).get("deleted", 0)
        return int(deleted) > 0

    # -- watch -----------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int | None = None) -> Watch:
        # Events *after* start_revision; etcd's start_revision is inclusive. "From now
        # on" is pinned here, not when the stream happens to open.
        after = self.revision() if start_revision is None else start_revision
        w = _EtcdWatch(self, prefix, after)
        self._watches.add(w)
        return w

    def close(self) -> None:
        for w in list(self._watches):
            w.close()
        for c in self._clients:
            c.session.close()


class _WatchFailed(Exception):
    pass


class _EtcdWatch(Watch):
    def __init__(self, store: EtcdStore, prefix: str, after: int) -> None:
        self._store = store
        raw = prefix.encode("utf-8")
        self._create = {
            "key": _b64(raw or b"\0"),
            "range_end": _b64(_prefix_end(raw)),
        }
        self._next_rev = after + 1
        self._queue: queue.Queue[list[Event] | BaseException | None] = queue.Queue()
        self._error: BaseException | None = None
        self._closed = threading.Event()
        self._sock_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._headers: dict[str, str] = {}  # those of the stream now open (its token)
        self._session = store.new_session()
        # Open the first stream here, so an unreachable etcd is reported by watch().
        try:
            resp = self._open()
        except BaseException:
            self._session.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(resp,), name=f"podnet-etcd-watch {prefix}", daemon=True
        )
        self._thread.start()

    # -- stream ----------------------------------------------------------------------
    def _open(self) -> requests.Response:
        body = {"create_request": dict(self._create, start_revision=self._next_rev)}
        timeout = self._store.timeout

        def post(client: Etcd3Client, headers: dict[str, str]) -> requests.Response:
            resp = self._session.post(
                client.get_url("/watch"), json=body, stream=True, timeout=(timeout, timeout),
                headers=headers,
            )
            self._headers = headers
            if resp.status_code != 200:
                text = resp.text
                resp.close()
                if resp.status_code >= 500:
                    raise etcd_exc.ConnectionFailedError(text, resp.reason)
                raise etcd_exc.Etcd3Exception(text, resp.reason)
            return resp

        resp = self._store._call(post)
        sock = _socket_of(resp)
        if sock is not None:
            sock.settimeout(WATCH_IDLE)
        with self._sock_lock:
            if self._closed.is_set():
                resp.close()
                raise _WatchFailed("closed")
            self._sock = sock
        return resp

    def _run(self, resp: requests.Response) -> None:
        try:
            while not self._closed.is_set():
                opened = time.monotonic()
                try:
                    self._read(resp)
                except (requests.RequestException, OSError, ValueError):
                    pass  # stream broke or idled out: reopen below
                except TokenRejected:
                    if self._store._auth is not None:  # log in again, then reopen
                        self._store._auth.discard(self._headers)
                finally:
                    with self._sock_lock:
                        self._sock = None
                    resp.close()
                if self._closed.is_set():
                    return
                if time.monotonic() - opened < 0.2:
                    time.sleep(0.2)  # do not spin on a stream that ends at once
                resp = self._open()
        except _WatchFailed as exc:
            if str(exc) != "closed":
                self._queue.put(StoreUnavailable(str(exc)))
        except PodnetError as exc:
            if not self._closed.is_set():
                self._queue.put(exc)
        except BaseException as exc:  # never die silently: report to the reader
            if not self._closed.is_set():
                self._queue.put(StoreUnavailable(f"etcd watch failed: {exc!r}"))

    def _read(self, resp: requests.Response) -> None:
        buf = b""
        for chunk in resp.iter_content(chunk_size=None):
            if self._closed.is_set():
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    self._message(json.loads(line))
        if buf.strip() and not self._closed.is_set():
            self._message(json.loads(buf))

    def _message(self, msg: dict) -> None:
        if "error" in msg:
            err = msg["error"]
            raise _WatchFailed(f"etcd watch error: {err.get('message', err)}")
        result = msg.get("result", {})
        if int(result.get("compact_revision", 0) or 0):
            raise _WatchFailed(
                f"etcd watch fell behind compaction (wanted revision {self._next_rev}, "
                f"compacted up to {result['compact_revision']})"
            )
        if result.get("canceled"):
            reason = str(result.get("cancel_reason", ""))
            auth = self._store._auth
            failure = auth_failure(reason, self._store._where(), auth.user if auth else None)
            if failure is not None:
                raise failure
            raise _WatchFailed(f"etcd watch canceled: {reason}")
        events = [_event(ev) for ev in result.get("events") or []]
        if events:
            self._next_rev = events[-1].revision + 1
            self._queue.put(events)

    # -- Watch API -------------------------------------------------------------------
    def next_batch(self, timeout: float) -> list[Event]:
        if self._error is not None:
            raise self._error
        if self._closed.is_set():
            return []
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return []
        batch: list[Event] = []
        for it in _drain(item, self._queue):
            if it is None:
                break
            if isinstance(it, BaseException):
                self._error = it
                if batch:
                    return batch  # deliver what came before; raise next time
                raise it
            batch.extend(it)
        return batch

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._sock_lock:
            sock = self._sock
            if sock is not None:
                # Wakes the reader blocked in recv(); the reader closes the response.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(self._store.timeout * 2 + 1)
        self._session.close()


def _drain(first: Any, q: queue.Queue) -> Iterator[Any]:
    yield first
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def _socket_of(resp: requests.Response) -> socket.socket | None:
    conn = getattr(resp.raw, "connection", None)
    sock = getattr(conn, "sock", None)
    return sock if isinstance(sock, socket.socket) else None
