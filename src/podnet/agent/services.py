"""The agent's service loop (kube-proxy's job): every agent programs every service.

Services live in the store (podnet.services.alloc); their endpoints are the addresses
of pods whose labels match the service's selector (labels come from the CNI call's
runtimeConfig or `podnet pod label`). One watch over /podnet/ feeds changes in; only
services whose spec or endpoint set changed are re-rendered (ServiceProxy.update, one
small nft transaction each). A full sync runs at start, after the store comes back, and
every `full_period` seconds; on an unchanged world it changes nothing in the kernel.
"""

from __future__ import annotations

import logging
import threading
import time

from podnet.errors import StoreUnavailable
from podnet.services import world
from podnet.services.model import Service
from podnet.services.proxy import ServiceProxy
from podnet.store import Store

log = logging.getLogger("podnet.agent")


def _table_exists() -> bool:
    from podnet.kernel import nft
    from podnet.services.nft import TABLE

    return any(o.get("table", {}).get("name") == TABLE for o in nft.list_json("tables"))


class ServiceKeeper:
    def __init__(self, store: Store, *, full_period: float = 60.0) -> None:
        self.store = store
        self.proxy: ServiceProxy | None = None
        self.full_period = full_period
        self.errors: list[str] = []
        self.synced_revision = 0  # store revision of the last complete sync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, tuple[Service, tuple[str, ...]]] = {}

    def _world(self) -> tuple[dict[str, Service], dict[str, list[str]]]:
        return world.snapshot(self.store)

    def full_sync(self) -> None:
        revision = self.store.revision()
        services, eps = self._world()
        if self.proxy is None:
            if not services and not _table_exists():
                self.synced_revision = revision
                return  # nothing to program: do not create an empty table
            self.proxy = ServiceProxy()
        self.proxy.sync_all(services.values(), eps)
        self._seen = {n: (s, tuple(eps[n])) for n, s in services.items()}
        self.synced_revision = revision

    def incremental(self) -> None:
        if self.proxy is None:
            self.full_sync()
            return
        services, eps = self._world()
        for name in set(self._seen) - set(services):
            self.proxy.remove(name)
            del self._seen[name]
        for name, svc in services.items():
            want = (svc, tuple(eps[name]))
            if self._seen.get(name) != want:
                self.proxy.update(svc, eps[name])
                self._seen[name] = want

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="services", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _loop(self) -> None:
        watch = None
        next_full = 0.0
        while not self._stop.is_set():
            try:
                if watch is None:
                    start = self.store.revision()
                    watch = self.store.watch(world.WATCH_PREFIX, start_revision=start)
                    next_full = 0.0
                if time.monotonic() >= next_full:
                    self.full_sync()
                    next_full = time.monotonic() + self.full_period
                events = watch.next_batch(timeout=0.2)
                if world.relevant(e.key for e in events):
                    self.incremental()
                self.errors = []
            except StoreUnavailable:
                if watch is not None:
                    watch.close()
                watch = None
                self._stop.wait(0.5)
            except Exception as exc:  # noqa: BLE001 - keep serving; report in status
                log.exception("service sync failed")
                self.errors = [f"services: {exc}"]
                next_full = time.monotonic() + 1.0
                self._stop.wait(0.5)
        if watch is not None:
            watch.close()
        if self.proxy is not None:
            self.proxy.close()
