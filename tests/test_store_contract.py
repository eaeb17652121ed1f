"""One contract suite for every store (src/podnet/store/base.py), run on each of them.

The SQLite store uses a fresh file per test; the etcd store shares one real etcd per
session, so every test works under its own random key prefix. `etcd-tls` is the same
over TLS with a client certificate and etcd auth (settings by PODNET_ETCD_* variables,
so the racing worker processes get them too). Timing-sensitive checks
leave room for etcd's whole-second leases and its ~0.5 s lease expiry sweep.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from podnet.errors import TRY_AGAIN_LATER, Conflict, StoreUnavailable
from podnet.store import Event, Store, open_store

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "etcd", "etcd-tls"])
def store_url(request: pytest.FixtureRequest, tmp_path, monkeypatch: pytest.MonkeyPatch
              ) -> str:
    if request.param == "sqlite":
        return "sqlite://" + str(tmp_path / "store.db")
    if request.param == "etcd-tls":
        server = request.getfixturevalue("etcd_tls_server")
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        return server.url
    return request.getfixturevalue("etcd_url")


@pytest.fixture
def store(store_url: str):
    with open_store(store_url) as s:
        yield s


@pytest.fixture
def p() -> str:
    """A key prefix of this test's own (the etcd store is shared by the session)."""
    return f"/pnt-test/{uuid.uuid4().hex[:8]}/"


def collect(watch, n: int, timeout: float = 5.0) -> list[Event]:
    """At least n events from watch, or whatever arrived by the deadline."""
    out: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.extend(watch.next_batch(timeout=min(0.5, deadline - time.monotonic())))
    return out


def wait_gone(store: Store, key: str, timeout: float) -> float | None:
    """Seconds until get(key) is None, or None if it is still there after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if store.get(key) is None:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


# -- basic operations ---------------------------------------------------------------------
def test_get_missing(store: Store, p: str) -> None:
    assert store.get(p + "missing") is None
    assert store.list(p) == []


def test_put_get_round_trip(store: Store, p: str) -> None:
    value = {"name": "web", "n": 3, "f": 1.5, "ok": True, "none": None,
             "list": [1, "two", {"three": 3}], "nested": {"é": "ünïcode ✓"}}
    rev = store.put(p + "k", value)
    e = store.get(p + "k")
    assert e is not None
    assert (e.key, e.value, e.revision) == (p + "k", value, rev)
    rev2 = store.put(p + "k", {"v": 2})
    assert rev2 > rev
    e = store.get(p + "k")
    assert e is not None and e.value == {"v": 2} and e.revision == rev2
    # keys beyond ASCII round-trip too
    store.put(p + "ключ/✓", {"v": 3})
    assert store.get(p + "ключ/✓").value == {"v": 3}


def test_revisions_increase_store_wide(store: Store, p: str) -> None:
    before = store.revision()
    r1 = store.put(p + "a", {"v": 1})
    r2 = store.put(p + "b", {"v": 1})
    r3 = store.put(p + "a", {"v": 2})
    assert before < r1 < r2 < r3
    assert store.revision() >= r3
    assert store.get(p + "a").revision == r3
    assert store.get(p + "b").revision == r2
    assert store.delete(p + "b")
    r4 = store.revision()
    assert r4 > r3
    # a failed compare writes nothing
    with pytest.raises(Conflict):
        store.put(p + "a", {"v": 3}, revision=r1)
    assert store.revision() == r4


def test_create_if_absent(store: Store, p: str) -> None:
    k = p + "lock"
    rev = store.put(k, {"owner": 1}, revision=0)
    with pytest.raises(Conflict) as info:
        store.put(k, {"owner": 2}, revision=0)
    assert info.value.key == k
    e = store.get(k)
    assert e.value == {"owner": 1} and e.revision == rev
    assert store.delete(k)
    store.put(k, {"owner": 3}, revision=0)
    assert store.get(k).value == {"owner": 3}


def test_compare_and_put(store: Store, p: str) -> None:
    k = p + "cas"
    r1 = store.put(k, {"v": 1})
    r2 = store.put(k, {"v": 2}, revision=r1)
    with pytest.raises(Conflict):
        store.put(k, {"v": 3}, revision=r1)  # stale
    assert store.get(k).value == {"v": 2}
    r3 = store.put(k, {"v": 4}, revision=r2)
    assert store.get(k).revision == r3
    with pytest.raises(Conflict):
        store.put(p + "absent", {"v": 1}, revision=r3)  # absent key is at no revision
    assert store.get(p + "absent") is None


def test_delete(store: Store, p: str) -> None:
    k = p + "d"
    assert store.delete(k) is False
    store.put(k, {"v": 1})
    assert store.delete(k) is True
    assert store.get(k) is None
    assert store.delete(k) is False


def test_delete_revision_checked(store: Store, p: str) -> None:
    k = p + "d"
    r1 = store.put(k, {"v": 1})
    r2 = store.put(k, {"v": 2})
    with pytest.raises(Conflict):
        store.delete(k, revision=r1)  # stale
    assert store.get(k).value == {"v": 2}
    with pytest.raises(Conflict):
        store.delete(k, revision=0)  # 0 means "absent", and it is not
    assert store.delete(k, revision=r2) is True
    with pytest.raises(Conflict):
        store.delete(k, revision=r2)  # gone: no longer at r2
    assert store.delete(k, revision=0) is False  # absent, as expected: nothing to do


def test_list_prefix_exact_and_sorted(store: Store, p: str) -> None:
    keys = [p + "a/2", p + "ab", p + "a/1", p + "a", p + "b/1", p + "a/sub/x",
            p + "a/é", p + "a/Z", p + "a0", p + "a/\U0001f600", p + "a/\uffff"]
    for i, k in enumerate(keys):
        store.put(k, {"i": i})
    got = store.list(p + "a/")
    want = sorted(k for k in keys if k.startswith(p + "a/"))
    assert [e.key for e in got] == want
    assert [e.value["i"] for e in got] == [keys.index(k) for k in want]
    assert [e.key for e in store.list(p + "a")] == sorted(k for k in keys if k.startswith(p + "a"))
    assert [e.key for e in store.list(p)] == sorted(keys)
    assert store.list(p + "zz/") == []
    assert all(e.revision > 0 for e in got)


# -- TTL ----------------------------------------------------------------------------------
def test_ttl_expiry_refresh_and_watch(store: Store, p: str) -> None:
    w = store.watch(p)
    try:
        t0 = time.monotonic()
        store.put(p + "plain", {"v": 1}, ttl=1)
        store.put(p + "refreshed", {"v": 1}, ttl=1)
        store.put(p + "detached", {"v": 1}, ttl=1)
        store.put(p + "persistent", {"v": 1})
        assert store.get(p + "plain").value == {"v": 1}
        time.sleep(0.6)
        store.put(p + "refreshed", {"v": 2}, ttl=1)  # a fresh TTL from now
        store.put(p + "detached", {"v": 2})  # written without a TTL: no longer expires
        assert store.get(p + "plain") is not None  # not before its TTL

        time.sleep(max(0.0, t0 + 1.3 - time.monotonic()))
        # the refreshed key lives about 1 s from its second write, not its first
        assert store.get(p + "refreshed").value == {"v": 2}
        gone = wait_gone(store, p + "plain", timeout=4.0)
        assert gone is not None, "a TTL'd key must expire"
        assert p + "plain" not in [e.key for e in store.list(p)]
        assert wait_gone(store, p + "refreshed", timeout=4.0) is not None
        assert store.get(p + "detached").value == {"v": 2}
        assert store.get(p + "persistent").value == {"v": 1}

        events = collect(w, 8, timeout=3.0)
        deletes = [e.key for e in events if e.kind == "delete"]
        assert deletes == [p + "plain", p + "refreshed"], events
        assert [e.revision for e in events] == sorted(e.revision for e in events)
        # an expired key can be created again
        store.put(p + "plain", {"v": 3}, revision=0)
    finally:
        w.close()


# -- watch --------------------------------------------------------------------------------
def test_watch_delivers_in_order(store: Store, p: str) -> None:
    start = store.revision()
    with store.watch(p + "w/") as w:
        r1 = store.put(p + "w/a", {"v": 1})
        store.put(p + "wx", {"v": 0})  # outside the prefix
        r2 = store.put(p + "w/b", {"v": 2})
        r3 = store.put(p + "w/a", {"v": 3})
        store.delete(p + "w/b")
        r4 = store.revision()
        events = collect(w, 4)
        assert events == [
            Event("put", p + "w/a", {"v": 1}, r1),
            Event("put", p + "w/b", {"v": 2}, r2),
            Event("put", p + "w/a", {"v": 3}, r3),
            Event("delete", p + "w/b", None, r4),
        ]
        assert w.next_batch(timeout=0.2) == []

    # from a start revision: events *after* it, replayed from history
    with store.watch(p + "w/", start_revision=r1) as w:
        events = collect(w, 3)
        assert [(e.kind, e.key, e.revision) for e in events] == [
            ("put", p + "w/b", r2), ("put", p + "w/a", r3), ("delete", p + "w/b", r4)]
    with store.watch(p + "w/", start_revision=start) as w:
        assert len(collect(w, 4)) == 4
        r5 = store.put(p + "w/c", {"v": 5})
        assert collect(w, 1) == [Event("put", p + "w/c", {"v": 5}, r5)]


def test_watch_timeout_and_close(store: Store, p: str) -> None:
    threads = threading.active_count()
    w = store.watch(p)
    t = time.monotonic()
    assert w.next_batch(timeout=0.3) == []
    elapsed = time.monotonic() - t
    assert 0.25 <= elapsed < 1.5
    # a reader blocked in next_batch on another thread is released by close()
    result: list = []
    reader = threading.Thread(target=lambda: result.append(w.next_batch(timeout=10)))
    reader.start()
    time.sleep(0.2)
    t = time.monotonic()
    w.close()
    reader.join(5)
    assert not reader.is_alive()
    assert result == [[]]
    assert time.monotonic() - t < 3
    assert w.next_batch(timeout=0.1) == []
    w.close()  # idempotent
    assert threading.active_count() == threads, threading.enumerate()


def _compact(store: Store, monkeypatch: pytest.MonkeyPatch, p: str) -> int:
    """Drop the store's history up to now; returns a revision now out of reach."""
    old = store.put(p + "old", {"v": 0})
    if store.__class__.__name__ == "SqliteStore":
        from podnet.store import sqlite

        monkeypatch.setattr(sqlite, "_EVENT_HISTORY", 2)
        monkeypatch.setattr(sqlite, "_TRIM_EVERY", 1)
        for i in range(3):
            store.put(p + "x", {"v": i})
    else:
        for i in range(3):
            store.put(p + "x", {"v": i})
        store._post("/kv/compaction",  # type: ignore[attr-defined]
                    {"revision": store.revision(), "physical": True})
    return old


def test_watch_behind_compaction_raises(
    store: Store, p: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _compact(store, monkeypatch, p)
    w = store.watch(p, start_revision=old - 1)
    try:
        with pytest.raises(StoreUnavailable):
            for _ in range(20):
                w.next_batch(timeout=0.25)
    finally:
        w.close()
    # a watch from now on still works
    with store.watch(p) as w:
        rev = store.put(p + "new", {"v": 1})
        assert collect(w, 1) == [Event("put", p + "new", {"v": 1}, rev)]


# -- concurrency across OS processes ------------------------------------------------------
WORKER = r"""
import itertools, json, os, sys
from podnet.errors import Conflict
from podnet.store import open_store

url, mode, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store(url)
store.revision()  # connected and warmed up before the race
print("ready", flush=True)
sys.stdin.readline()
if mode == "create":
    try:
        rev = store.put(prefix + "lock", {"pid": os.getpid()}, revision=0)
        print(json.dumps({"won": rev}))
    except Conflict:
        print(json.dumps({"won": None}))
else:
    slots, conflicts = [], 0
    for i in range(count):
        while True:
            used = {e.key for e in store.list(prefix)}
            slot = next(n for n in itertools.count() if f"{prefix}{n:04d}" not in used)
            try:
                store.put(f"{prefix}{slot:04d}", {"pid": os.getpid(), "i": i}, revision=0)
            except Conflict:
                conflicts += 1
                continue
            slots.append(slot)
            break
    print(json.dumps({"slots": slots, "conflicts": conflicts, "pid": os.getpid()}))
store.close()
"""


def run_racers(url: str, mode: str, prefix: str, n: int, count: int = 0) -> list[dict]:
    """Start n worker processes, release them together, return their JSON results."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, mode, prefix, str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(n)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            results.append(json.loads(out))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_concurrent_create_exactly_one_wins(store: Store, store_url: str, p: str) -> None:
    results = run_racers(store_url, "create", p, 20)
    winners = [r["won"] for r in results if r["won"] is not None]
    assert len(winners) == 1, results
    e = store.get(p + "lock")
    assert e is not None and e.revision == winners[0]


def test_concurrent_allocation_no_duplicates(store: Store, store_url: str, p: str) -> None:
    results = run_racers(store_url, "allocate", p, 8, count=25)
    slots = [s for r in results for s in r["slots"]]
    assert len(slots) == 200
    assert sorted(slots) == list(range(200))  # distinct, and lowest-free leaves no gaps
    owners = {f"{p}{s:04d}": r["pid"] for r in results for s in r["slots"]}
    entries = store.list(p)
    assert {e.key: e.value["pid"] for e in entries} == owners


# -- etcd only: unreachable store ---------------------------------------------------------
@pytest.fixture
def own_etcd():
    """An etcd of this test's own, which it may stop and start."""
    from etcd_server import EtcdServer, etcd_available

    if not etcd_available():
        pytest.skip("etcd binary not installed")
    with EtcdServer() as server:
        yield server


def test_etcd_down_then_back(own_etcd) -> None:
    store = open_store(own_etcd.url)
    try:
        rev = store.put("/k", {"v": 1})
        w = store.watch("/")
        own_etcd.stop()
        for op in (lambda: store.get("/k"), lambda: store.put("/k", {"v": 2}),
                   lambda: store.list("/"), store.revision, lambda: store.watch("/")):
            t = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                op()
            assert time.monotonic() - t < 3
            assert info.value.code == TRY_AGAIN_LATER
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            for _ in range(10):
                w.next_batch(timeout=0.5)
        assert time.monotonic() - t < 3
        w.close()

        own_etcd.start()
        e = store.get("/k")  # the same object, not reopened
        assert e is not None and e.value == {"v": 1} and e.revision == rev
        assert store.put("/k", {"v": 3}, revision=rev) > rev
        with store.watch("/") as w2:
            r = store.delete("/k")
            assert r is True
            assert [ev.kind for ev in collect(w2, 1)] == ["delete"]
    finally:
        store.close()


def test_etcd_hung_server_times_out() -> None:
    """A server that accepts connections but never answers: fail in ~2 s, not hang."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)  # never accept(): the kernel completes handshakes, nobody replies
        store = open_store(f"etcd://127.0.0.1:{lsock.getsockname()[1]}")
        try:
            t = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.get("/k")
            assert time.monotonic() - t < 3
        finally:
            store.close()


def test_etcd_failover_to_live_endpoint(etcd_url: str, p: str) -> None:
    """With several endpoints, one that refuses connections is skipped."""
    from etcd_server import free_ports

    dead = free_ports(1)[0]
    live = etcd_url.removeprefix("etcd://")
    with open_store(f"etcd://127.0.0.1:{dead},{live}") as store:
        rev = store.put(p + "k", {"v": 1})
        assert store.get(p + "k").revision == rev


def test_etcd_watch_resumes_after_idle_reconnect(
    etcd_url: str, p: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle stream is reopened after the last delivered revision: no loss, no repeats."""
    from podnet.store import etcd

    monkeypatch.setattr(etcd, "WATCH_IDLE", 0.3)
    with open_store(etcd_url) as store, store.watch(p) as w:
        r1 = store.put(p + "a", {"v": 1})
        assert collect(w, 1) == [Event("put", p + "a", {"v": 1}, r1)]
        assert w.next_batch(timeout=1.2) == []  # several reopenings meanwhile
        r2 = store.put(p + "a", {"v": 2})
        assert collect(w, 2, timeout=1.0) == [Event("put", p + "a", {"v": 2}, r2)]
