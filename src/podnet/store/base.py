"""The narrow store contract every podnet component talks to.

Seven operations, after the CNI reference IPAM store: get, put (optionally only if the
key is at a given revision, or absent, and optionally with a TTL), delete (optionally
revision-checked), list by prefix, watch a prefix, the current revision, close.
Values are JSON objects. Keys are '/'-separated paths such as '/podnet/networks/web'.

Revision semantics follow etcd: every write bumps one store-wide revision counter and
an entry's `revision` is the store revision of its last write (etcd's mod_revision).
`put(..., revision=0)` means "create only if absent". A key written with `ttl` expires
`ttl` seconds after that write unless written again; expiry is seen by readers and by
watchers as a delete.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Entry:
    key: str
    value: dict
    revision: int


@dataclass(frozen=True)
class Event:
    kind: Literal["put", "delete"]
    key: str
    value: dict | None
    revision: int


class Watch(abc.ABC):
    """A stream of events under one prefix, in revision order."""

    @abc.abstractmethod
    def next_batch(self, timeout: float) -> list[Event]:
        """Events since the last batch; waits up to `timeout` seconds for the first one.

        Raises StoreUnavailable when the store cannot be reached; the caller then falls
        back to a full list() and opens a new watch.
        """

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(abc.ABC):
    @abc.abstractmethod
    def get(self, key: str) -> Entry | None: ...

    @abc.abstractmethod
    def put(
        self, key: str, value: dict, *, revision: int | None = None, ttl: float | None = None
    ) -> int:
        """Write `value`; returns the new revision.

        revision=None writes unconditionally; revision=0 only if the key is absent;
        revision=N only if the key's current revision is N. Raises Conflict otherwise.
        """

    @abc.abstractmethod
    def delete(self, key: str, *, revision: int | None = None) -> bool:
        """Remove `key`; False if it was absent. Revision-checked like put (Conflict)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[Entry]:
        """Every live entry whose key starts with `prefix`, sorted by key."""

    @abc.abstractmethod
    def watch(self, prefix: str, *, start_revision: int | None = None) -> Watch:
        """Events under `prefix` after `start_revision` (default: from now on)."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
