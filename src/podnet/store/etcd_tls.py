"""TLS and credential settings of the etcd store, checked before the first request, and
the TLS failures of a request turned into one clear configuration error.

Why settings come from flags and the environment only (config.etcd_settings), never from
the store URL: a CNI configuration may name a store, and it must not be able to point
the agent's certificates or password anywhere; the URL says only where and whether TLS
(`etcd+https://`). A plain `etcd://` URL with certificate settings is refused rather
than silently sending everything in the clear.

Why every file is loaded into an ssl context up front: a wrong path, a file that is not
PEM or a key that does not match its certificate then fails at open with the file's
name, instead of as an obscure handshake error on the first request.

Why a failed handshake is code 7 and not 11: an untrusted server certificate, a client
certificate the server refuses, or a server that does not speak TLS will not get better
by retrying; only an unreachable server is "try again later". etcd (Go) mostly answers a
missing or foreign client certificate by closing the connection mid-handshake (an EOF,
rarely the "bad certificate" alert), so an EOF in the handshake counts as a refusal too;
the store repeats such a request once first (a server going down could cut one short).
A plain etcd also just closes (or resets) the connection on a TLS hello, so after such
an EOF or reset one plain `GET /version` tells the two apart.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podnet.errors import INVALID_CONFIG, PodnetError

FLAGS = {"cacert": "--etcd-cacert", "cert": "--etcd-cert", "key": "--etcd-key",
         "user": "--etcd-user", "password": "--etcd-password"}

# ssl.SSLError.reason values that mean "this configuration cannot work".
_UNTRUSTED = {"CERTIFICATE_VERIFY_FAILED"}
_CLIENT_REFUSED = {"SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                   "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
                   "SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV1_ALERT_ACCESS_DENIED",
                   "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_DECRYPT_ERROR"}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "HTTP_REQUEST", "UNKNOWN_PROTOCOL"}


@dataclass(frozen=True)
class EtcdSecurity:
    """What an etcd client presents: CA to trust, client certificate, user/password."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None

    @classmethod
    def from_settings(cls, settings: dict[str, str]) -> EtcdSecurity:
        unknown = set(settings) - set(FLAGS)
        if unknown:
            raise ValueError(f"unknown etcd settings {sorted(unknown)}")
        return cls(**{k: v for k, v in settings.items() if v})

    @property
    def tls_files(self) -> bool:
        return bool(self.cacert or self.cert or self.key)

    def __repr__(self) -> str:  # never print the password
        shown = {k: getattr(self, k) for k in ("cacert", "cert", "key", "user")}
        return "EtcdSecurity(" + ", ".join(f"{k}={v!r}" for k, v in shown.items() if v) + ")"

    def check(self, tls: bool, url: str) -> None:
        """Refuse settings that cannot work for this URL, naming the flag or file."""
        if bool(self.cert) != bool(self.key):
            given, missing = ("cert", "key") if self.cert else ("key", "cert")
            raise PodnetError(INVALID_CONFIG, f"etcd {FLAGS[given]} needs {FLAGS[missing]}",
                              "a client certificate and its key go together")
        if bool(self.user) != bool(self.password):
            given, missing = ("user", "password") if self.user else ("password", "user")
            raise PodnetError(INVALID_CONFIG, f"etcd {FLAGS[given]} needs {FLAGS[missing]}")
        if self.tls_files and not tls:
            raise PodnetError(INVALID_CONFIG, "etcd TLS settings need a TLS store URL",
                              f"{url} is plain HTTP; use etcd+https://host:port")
        if tls:
            self._load_files()

    def _load_files(self) -> None:
        for what in ("cacert", "cert", "key"):
            path = getattr(self, what)
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise PodnetError(INVALID_CONFIG, f"etcd {FLAGS[what]} {path}: "
                                  f"{exc.strerror or exc}") from exc
        try:
            ctx = ssl.create_default_context(cafile=self.cacert)
        except (ssl.SSLError, ValueError) as exc:
            raise PodnetError(INVALID_CONFIG, f"etcd --etcd-cacert {self.cacert}: "
                              "not a PEM CA certificate", _reason(exc)) from exc
        if self.cert and self.key:
            try:
                ctx.load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, ValueError) as exc:
                raise PodnetError(INVALID_CONFIG, f"etcd --etcd-cert {self.cert} / --etcd-key "
                                  f"{self.key}: not a matching PEM certificate and key",
                                  _reason(exc)) from exc

    def session_options(self, tls: bool) -> dict[str, Any]:
        """`verify` and `cert` for a requests.Session (plain HTTP: none)."""
        if not tls:
            return {}
        out: dict[str, Any] = {"verify": self.cacert or True}
        if self.cert and self.key:
            out["cert"] = (self.cert, self.key)
        return out


def tls_failure(exc: BaseException, endpoint: str, security: EtcdSecurity,
                plain_http: Callable[[], bool] | None = None) -> PodnetError | None:
    """The configuration error a failed TLS handshake means, or None (not TLS's fault).
    plain_http: asks whether the endpoint answers plain HTTP (after a cut handshake)."""
    err = find_ssl_error(exc)
    if err is None:
        reset = _find(exc, ConnectionResetError)
        if reset is not None and plain_http is not None and plain_http():
            return PodnetError(INVALID_CONFIG, f"etcd {endpoint} does not speak TLS",
                               f"{reset}; use an etcd:// URL for a plain endpoint")
        return None
    reason = str(getattr(err, "reason", "") or "")
    text = _reason(err)
    if isinstance(err, ssl.SSLCertVerificationError) or reason in _UNTRUSTED:
        trust = (f"--etcd-cacert {security.cacert}" if security.cacert
                 else "the default CA bundle (set --etcd-cacert)")
        return PodnetError(INVALID_CONFIG, f"etcd {endpoint}: server certificate not trusted",
                           f"{text}; checked against {trust}")
    if reason in _NOT_TLS or (handshake_cut(err) and plain_http is not None and plain_http()):
        return PodnetError(INVALID_CONFIG, f"etcd {endpoint} does not speak TLS",
                           f"{text}; use an etcd:// URL for a plain endpoint")
    if reason in _CLIENT_REFUSED or handshake_cut(err):
        if security.cert:
            why = f"it refused the client certificate --etcd-cert {security.cert}"
        else:
            why = "it requires a client certificate (--etcd-cert and --etcd-key)"
        return PodnetError(INVALID_CONFIG, f"etcd {endpoint}: TLS handshake refused",
                           f"{why}: {text}")
    return None


def answers_plain_http(host: str, port: int, timeout: float) -> bool:
    """True when host:port answers a plain HTTP request (it is no TLS endpoint)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(f"GET /version HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def handshake_cut(err: BaseException | None) -> bool:
    """The server closed the connection in the middle of the TLS handshake."""
    return isinstance(err, ssl.SSLEOFError)


def find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError somewhere under a requests/urllib3 exception, if any."""
    found = _find(exc, ssl.SSLError)
    return found if isinstance(found, ssl.SSLError) else None


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        cur = todo.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen or len(seen) > 50:
            continue
        seen.add(id(cur))
        if isinstance(cur, kind):
            return cur
        todo.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args])
    return None


def _reason(exc: BaseException) -> str:
    """An ssl error's own words, without the '[SSL: X]' prefix and '(_ssl.c:N)' tail."""
    text = getattr(exc, "verify_message", None) or ""
    if text:
        return f"certificate verify failed: {text}"
    text = str(exc.args[1] if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else exc)
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(" (_ssl.c:", 1)[0]
