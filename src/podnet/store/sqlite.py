"""The embedded store: one SQLite file shared by every process on a machine.

Why SQLite: a single file needs no server, survives restarts, and with WAL journaling
and `BEGIN IMMEDIATE` write transactions it serialises writers from many processes
(CNI plugins, agents of several lab hosts) safely. A store-wide revision counter and
an event log give etcd's semantics (mod revisions, compare-and-put, prefix watch), so
the same code runs on both stores. TTL'd keys carry an expiry time: readers ignore
expired keys, and the next writer or watcher deletes them and logs a delete event.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

from podnet.errors import Conflict, StoreUnavailable
from podnet.store.base import Entry, Event, Store, Watch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL,
    expires REAL
);
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
INSERT OR IGNORE INTO meta (name, value) VALUES ('compacted', 0);
"""

# Keep this many revisions of history for watchers that lag behind; trim every
# _TRIM_EVERY revisions. A watcher further behind gets StoreUnavailable (re-list).
_EVENT_HISTORY = 10000
_TRIM_EVERY = 1000
_POLL_INTERVAL = 0.02


def _retry_locked(fn, timeout: float):  # type: ignore[no-untyped-def]
    """Run fn, retrying while another process holds the lock. Switching a new database
    to WAL needs an exclusive lock, and SQLite does not apply its busy timeout to it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


_MAX_IDLE = 8  # idle connections kept per store object


class SqliteStore(Store):
    def __init__(self, path: str, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        # Idle connections, reused by whichever thread needs one next: an agent serves
        # each request in a fresh thread, so per-thread connections would leak.
        self._idle: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # Writers of this process queue here instead of in SQLite's busy handler, which
        # sleeps up to 100 ms between retries; other processes still meet the file lock.
        self._write_lock = threading.Lock()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        with self._conn() as db:
            try:
                db.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{path}: {exc}") from exc

    # -- connections -------------------------------------------------------------
    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation, returned to the idle pool afterwards."""
        with self._conns_lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            try:
                db = sqlite3.connect(
                    self.path, timeout=self._busy_timeout, isolation_level=None,
                    check_same_thread=False,
                )
                _retry_locked(lambda: db.execute("PRAGMA journal_mode=WAL"), self._busy_timeout)
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from exc
        try:
            yield db
        finally:
            with self._conns_lock:
                if len(self._idle) < _MAX_IDLE:
                    self._idle.append(db)
                    db = None
            if db is not None:
                db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), one writer of this process at
        a time."""
        with self._write_lock, self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Close the idle connections (the store must not be in use any more)."""
        with self._conns_lock:
            conns, self._idle = self._idle, []
        for db in conns:
            db.close()

    # -- reads -------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        row = self._query(
            "SELECT key, value, revision FROM kv "
            "WHERE key = ? AND (expires IS NULL OR expires > ?)",
            (key, time.time()),
        )
        return _entry(row[0]) if row else None

    def list(self, prefix: str) -> list[Entry]:
        where, args = _prefix_where(prefix)
        rows = self._query(
            f"SELECT key, value, revision FROM kv WHERE {where} "
            "AND (expires IS NULL OR expires > ?) ORDER BY key",
            (*args, time.time()),
        )
        return [_entry(r) for r in rows]

    def revision(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE name = 'revision'")[0][0])

    def compacted(self) -> int:
        """Revisions up to this one are no longer in the event log."""
        rows = self._query("SELECT value FROM meta WHERE name = 'compacted'")
        return int(rows[0][0]) if rows else 0

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._conn() as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    # -- writes ------------------------------------------------------------------
    def put(
        self, key: str, value: dict, *, revision: int | None = None, ttl: float | None = None
    ) -> int:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"))
        try:
            with self._write() as db:
                now = time.time()
                self._sweep(db, now)
                self._check(db, key, revision)
                rev = self._bump(db)
                expires = now + ttl if ttl is not None else None
                db.execute(
                    "INSERT INTO kv (key, value, revision, expires) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                    "revision = excluded.revision, expires = excluded.expires",
                    (key, data, rev, expires),
                )
                db.execute(
                    "INSERT INTO events (revision, key, kind, value) VALUES (?, ?, 'put', ?)",
                    (rev, key, data),
                )
                return rev
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def delete(self, key: str, *, revision: int | None = None) -> bool:
        try:
            with self._write() as db:
                self._sweep(db, time.time())
                self._check(db, key, revision)
                row = db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone()
                if row is None:
                    return False
                rev = self._bump(db)
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
                db.execute(
                    "INSERT INTO events (revision, key, kind, value) VALUES (?, ?, 'delete', NULL)",
                    (rev, key),
                )
                return True
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    @staticmethod
    def _check(db: sqlite3.Connection, key: str, revision: int | None) -> None:
        """Conflict unless the key is at `revision` (0: absent), as etcd's compares do."""
        if revision is None:
            return
        row = db.execute("SELECT revision FROM kv WHERE key = ?", (key,)).fetchone()
        current = row[0] if row else 0
        if current != revision:
            raise Conflict(key)

    @staticmethod
    def _bump(db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
        rev = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        if rev % _TRIM_EVERY == 0 and rev > _EVENT_HISTORY:
            db.execute("DELETE FROM events WHERE revision <= ?", (rev - _EVENT_HISTORY,))
            db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('compacted', ?)",
                (rev - _EVENT_HISTORY,),
            )
        return int(rev)

    @classmethod
    def _sweep(cls, db: sqlite3.Connection, now: float) -> None:
        expired = db.execute(
            "SELECT key FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,)
        ).fetchall()
        for (key,) in expired:
            rev = cls._bump(db)
            db.execute("DELETE FROM kv WHERE key = ?", (key,))
            db.execute(
                "INSERT INTO events (revision, key, kind, value) VALUES (?, ?, 'delete', NULL)",
                (rev, key),
            )

    def sweep_expired(self) -> None:
        """Delete expired keys now (logging delete events), if there are any."""
        now = time.time()
        try:
            if not self._query(
                "SELECT 1 FROM kv WHERE expires IS NOT NULL AND expires <= ? LIMIT 1", (now,)
            ):
                return
            with self._write() as db:
                self._sweep(db, now)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    # -- watch -------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int | None = None) -> Watch:
        start = self.revision() if start_revision is None else start_revision
        return _SqliteWatch(self, prefix, start)


class _SqliteWatch(Watch):
    def __init__(self, store: SqliteStore, prefix: str, after: int) -> None:
        self._store = store
        self._prefix = prefix
        self._after = after
        self._closed = False

    def next_batch(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        where, args = _prefix_where(self._prefix)
        while not self._closed:
            self._store.sweep_expired()
            rows = self._store._query(
                f"SELECT revision, key, kind, value FROM events WHERE revision > ? "
                f"AND {where} ORDER BY revision",
                (self._after, *args),
            )
            compacted = self._store.compacted()  # read after the events: it only grows
            if self._after < compacted:
                raise StoreUnavailable(
                    f"{self._store.path}: watch fell behind the event log "
                    f"(after revision {self._after}, compacted up to {compacted})"
                )
            if rows:
                self._after = rows[-1][0]
                return [
                    Event(kind, key, json.loads(value) if value else None, rev)
                    for rev, key, kind, value in rows
                ]
            if time.monotonic() >= deadline:
                return []
            time.sleep(_POLL_INTERVAL)
        return []

    def close(self) -> None:
        self._closed = True


def _prefix_where(prefix: str) -> tuple[str, tuple]:
    """An index-friendly SQL condition for `key` starting with `prefix`.

    TEXT compares as UTF-8 bytes (BINARY collation), which orders like code points, so
    the keys with the prefix are exactly those >= prefix and < the prefix with its last
    character incremented (characters at U+10FFFF are dropped and the next one bumped).
    """
    end = prefix
    while end:
        last = ord(end[-1])
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored; skip them
                nxt = 0xE000
            return "key >= ? AND key < ?", (prefix, end[:-1] + chr(nxt))
        end = end[:-1]
    return "key >= ?", (prefix,)


def _entry(row: tuple) -> Entry:
    return Entry(row[0], json.loads(row[1]), int(row[2]))
