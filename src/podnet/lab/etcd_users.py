"""Turn on etcd's auth for a fresh etcd: a root user, and a `podnet` user whose role may
read and write every key (but not manage users or auth), then `auth enable`.

Why through the HTTP gateway and not etcdctl: the lab and the tests already speak the
gateway with the right TLS session, and Debian's etcd-client is a separate package.
Why every key: podnet's revision probe reads the key "\\0", and the store contract tests
use prefixes of their own; the role still cannot touch users, roles or auth settings.
Run once, on a new data dir: auth settings live in etcd's data and survive restarts.
"""

from __future__ import annotations

import base64

import requests

from podnet.errors import STORE_FAILURE, PodnetError

ROOT = "root"
USER = "podnet"
ROLE = "podnet"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def enable_auth(base_url: str, session: requests.Session, *, root_password: str,
                user: str = USER, password: str, timeout: float = 5.0) -> None:
    """Create root and `user` (role ROLE: readwrite on all keys) and enable auth."""
    steps: list[tuple[str, dict]] = [
        ("/v3/auth/user/add", {"name": ROOT, "password": root_password}),
        ("/v3/auth/user/grant", {"user": ROOT, "role": "root"}),
        ("/v3/auth/role/add", {"name": ROLE}),
        ("/v3/auth/role/grant", {"name": ROLE, "perm": {
            "permType": "READWRITE", "key": _b64(b"\0"), "range_end": _b64(b"\0")}}),
        ("/v3/auth/user/add", {"name": user, "password": password}),
        ("/v3/auth/user/grant", {"user": user, "role": ROLE}),
        ("/v3/auth/enable", {}),
    ]
    for path, body in steps:
        try:
            resp = session.post(base_url + path, json=body, timeout=timeout)
        except requests.RequestException as exc:
            raise PodnetError(STORE_FAILURE, f"etcd auth set-up failed at {path}",
                              str(exc)) from exc
        if resp.status_code != 200:
            raise PodnetError(STORE_FAILURE, f"etcd auth set-up failed at {path}",
                              f"HTTP {resp.status_code}: {resp.text.strip()}")
