"""etcd's password authentication for the store, which etcd3gw does not have.

How etcd does it (v3 API, also through its HTTP gateway): POST /v3/auth/authenticate
with the user name and password answers a token; every later request carries it in the
`Authorization` header. A token stops working when it expires (simple tokens live
--auth-token-ttl seconds after their last use; 300 s by default), when etcd restarts
(simple tokens are held in memory) or when the auth configuration changes ("revision of
auth store is old"); etcd then answers "invalid auth token" (HTTP 401), or cancels a
watch with that reason. Then the store authenticates again, once, and repeats the
request: a request refused for its token was not applied, so repeating it is safe.

Why one token per store under a lock: the agent calls the store from many threads; the
first to need a token fetches it, the others wait for that one instead of logging in
in parallel, and a thread that saw a token refused discards it only if nobody has
replaced it meanwhile.

etcd's answers to bad credentials become one configuration error (code 7) naming the
endpoint and the user; as etcd's own client does, credentials given to an etcd that
has auth disabled are not an error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from podnet.errors import INVALID_CONFIG, PodnetError

# etcd's error texts (etcdserver/api/v3rpc/rpctypes), as the gateway returns them.
TOKEN_INVALID = "etcdserver: invalid auth token"
AUTH_OLD_REVISION = "etcdserver: revision of auth store is old"
USER_EMPTY = "etcdserver: user name is empty"
AUTH_FAILED = "etcdserver: authentication failed, invalid user ID or password"
PERMISSION_DENIED = "etcdserver: permission denied"
AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"
GATEWAY_CN = "CommonName of client sending a request against gateway"


class TokenRejected(Exception):
    """etcd refused the request's token: authenticate again and repeat the request."""


def error_text(detail: str | None) -> str:
    """etcd's message out of a gateway error body (JSON), or the body itself."""
    text = (detail or "").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):  # streaming responses nest it
            return str(err.get("message") or err)
        return str(body.get("message") or err or text)
    return text


def auth_failure(message: str, endpoint: str, user: str | None) -> Exception | None:
    """What an etcd error message means for the credentials: TokenRejected (log in again),
    a PodnetError to raise, or None (not an authentication matter)."""
    if TOKEN_INVALID in message or AUTH_OLD_REVISION in message:
        return TokenRejected(message)
    if USER_EMPTY in message:
        return PodnetError(INVALID_CONFIG, f"etcd {endpoint} requires authentication",
                           "set --etcd-user and --etcd-password (env PODNET_ETCD_USER, "
                           "PODNET_ETCD_PASSWORD)")
    if AUTH_FAILED in message:
        return PodnetError(INVALID_CONFIG, f"etcd {endpoint}: authentication failed for "
                           f"user {user!r}", "wrong --etcd-user or --etcd-password")
    if PERMISSION_DENIED in message:
        who = f"user {user!r}" if user else "this client"
        return PodnetError(INVALID_CONFIG, f"etcd {endpoint}: permission denied for {who}",
                           "grant its role readwrite on podnet's keys")
    if GATEWAY_CN in message:
        return PodnetError(INVALID_CONFIG, f"etcd {endpoint} refuses a client certificate "
                           "with a Common Name while etcd auth is on",
                           "its HTTP gateway cannot map the CN to a user: use a "
                           "certificate without CN plus --etcd-user/--etcd-password")
    return None


class TokenAuth:
    """The current token of one user; `login` performs POST /v3/auth/authenticate."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self._password = password
        self._token: str | None = None
        self._disabled = False  # etcd answered "auth not enabled": send no token
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenAuth(user={self.user!r})"

    def headers(self, login: Callable[[dict], dict]) -> dict[str, str]:
        """The header to send, authenticating first when there is no token."""
        with self._lock:
            if self._disabled:
                return {}
            if self._token is None:
                try:
                    answer = login({"name": self.user, "password": self._password})
                except PodnetError as exc:
                    if AUTH_NOT_ENABLED in str(exc):
                        self._disabled = True
                        return {}
                    raise
                token = answer.get("token")
                if not token:
                    raise PodnetError(INVALID_CONFIG, "etcd answered no auth token",
                                      f"for user {self.user!r}")
                self._token = str(token)
            return {"Authorization": self._token}

    def discard(self, headers: dict[str, str]) -> None:
        """Forget the token these headers carried (unless already replaced)."""
        with self._lock:
            if self._token is not None and headers.get("Authorization") == self._token:
                self._token = None
            self._disabled = False
