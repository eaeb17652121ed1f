"""The agent's overlay loop, one per overlay network (flannel's subnet manager + backend).

Start: create backend devices, lease a host subnet (the remembered one if possible),
set up the pod bridge, program every peer. Then one thread loops: take batches of lease
events from a watch and add/remove peers; renew the lease `renew_margin` seconds before
it expires; every `resync_period` seconds re-list all leases and re-apply every peer
(restoring neighbour, FDB entries and routes deleted behind our back) and prune what no
lease explains. When the store is unreachable, nothing is withdrawn: pods keep talking
on the last known state, and a full resync runs as soon as the store answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from podnet import keys, networks
from podnet.drivers.base import DriverContext
from podnet.drivers.overlay import OverlayDriver
from podnet.errors import Conflict, PodnetError, StoreUnavailable
from podnet.kernel import netns
from podnet.kernel.underlay import Underlay, find
from podnet.model import Network
from podnet.overlay import leases
from podnet.overlay.config import OverlayConfig, from_network
from podnet.overlay.leases import Lease
from podnet.store import Store

log = logging.getLogger("podnet.agent")


@dataclass
class Timing:
    lease_ttl: float = 60.0
    renew_margin: float = 20.0
    resync_period: float = 10.0


class OverlayKeeper:
    def __init__(self, store: Store, net: Network, driver: OverlayDriver, node: str,
                 public_ip: str | None, timing: Timing) -> None:
        self.store = store
        self.net = net
        self.driver = driver
        self.node = node
        self.public_ip = public_ip
        self.timing = timing
        self.cfg: OverlayConfig = from_network(net)
        self.lease: Lease | None = None
        self.under: Underlay | None = None
        self.peers: dict[str, Lease] = {}
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        with netns.iproute() as ipr:
            self.under = find(ipr, self.public_ip)
            memory = leases.remembered(self.store, self.cfg.network, self.node) or {}
            backend = self.driver.prepare_host(ipr, self.cfg, self.under, memory)
            backend["pod_mtu"] = self.driver.pod_mtu(self.cfg, self.under)
            self.lease = leases.acquire(self.store, self.cfg, self.node, self.under.address,
                                        backend, self.timing.lease_ttl)
            self.driver.setup_host(ipr, self.cfg, self.net, self.lease, self.under)
        log.info("%s: leased %s (public ip %s)", self.net.name, self.lease.subnet,
                 self.lease.public_ip)
        self.resync()
        self._thread = threading.Thread(target=self._loop, name=f"overlay-{self.net.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    # -- peers ------------------------------------------------------------------------
    def _apply_peer(self, ipr, peer: Lease, *, force: bool = False) -> None:  # type: ignore[no-untyped-def]
        """Program a peer. A lease renewal (same address and backend data) changes nothing
        in the kernel, so it is skipped unless `force` (the resync re-applies everything)."""
        assert self.lease and self.under
        old = self.peers.get(peer.subnet)
        same = old is not None and (old.node, old.public_ip, old.backend) == \
            (peer.node, peer.public_ip, peer.backend)
        if same and not force and peer.node not in self.errors:
            self.peers[peer.subnet] = peer
            return
        if old and not same:
            self.driver.remove_peer(ipr, self.cfg, old, self.under)
        try:
            self.driver.add_peer(ipr, self.cfg, self.lease, peer, self.under)
            self.errors.pop(peer.node, None)
        except PodnetError as exc:
            if self.errors.get(peer.node) != str(exc):
                log.error("%s: %s", self.net.name, exc)
            self.errors[peer.node] = str(exc)
        self.peers[peer.subnet] = peer

    def _withdraw(self, ipr, subnet: str) -> None:  # type: ignore[no-untyped-def]
        peer = self.peers.pop(subnet, None)
        if peer is not None and self.under is not None:
            self.driver.remove_peer(ipr, self.cfg, peer, self.under)
            self.errors.pop(peer.node, None)
            log.info("%s: withdrew peer %s (%s)", self.net.name, peer.node, subnet)

    def resync(self) -> None:
        """Re-apply every peer from a fresh listing; prune what no lease explains."""
        assert self.lease and self.under
        current = [p for p in leases.list_leases(self.store, self.cfg.network)
                   if p.node != self.node]
        with netns.iproute() as ipr:
            self.driver.setup_host(ipr, self.cfg, self.net, self.lease, self.under)
            for subnet in set(self.peers) - {p.subnet for p in current}:
                self._withdraw(ipr, subnet)
            for peer in current:
                self._apply_peer(ipr, peer, force=True)
            self.driver.prune(ipr, self.cfg, self.lease, current, self.under)

    def _on_events(self, events) -> None:  # type: ignore[no-untyped-def]
        with netns.iproute() as ipr:
            for ev in events:
                subnet = ev.key.rsplit("/", 1)[1].replace("_", "/")
                if ev.kind == "put" and ev.value:
                    peer = Lease.from_entry(ev.value, ev.revision)
                    if peer.node != self.node:
                        self._apply_peer(ipr, peer)
                elif ev.kind == "delete":
                    if self.lease and subnet == self.lease.subnet:
                        log.warning("%s: our lease vanished; renewing now", self.net.name)
                        self._renew()
                    else:
                        self._withdraw(ipr, subnet)

    # -- loop -------------------------------------------------------------------------
    def _renew(self) -> None:
        assert self.lease
        try:
            leases.renew(self.store, self.lease, self.timing.lease_ttl)
        except Conflict:
            log.error("%s: lease %s was taken by another node; leasing anew",
                      self.net.name, self.lease.subnet)
            self.start_again()

    def start_again(self) -> None:
        self.lease = leases.acquire(self.store, self.cfg, self.node, self.under.address,
                                    self.lease.backend, self.timing.lease_ttl)

    def _loop(self) -> None:
        watch = None
        next_renew = time.monotonic() + self.timing.lease_ttl - self.timing.renew_margin
        next_resync = time.monotonic() + self.timing.resync_period
        need_resync = False
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if watch is None:
                    start = self.store.revision()
                    watch = self.store.watch(keys.lease_prefix(self.cfg.network),
                                             start_revision=start)
                    need_resync = True
                if need_resync or now >= next_resync:
                    self.resync()
                    need_resync = False
                    next_resync = time.monotonic() + self.timing.resync_period
                if now >= next_renew:
                    self._renew()
                    next_renew = time.monotonic() + self.timing.lease_ttl - \
                        self.timing.renew_margin
                wait = max(0.0, min(next_renew, next_resync) - time.monotonic())
                events = watch.next_batch(timeout=min(wait, 0.2))
                if events:
                    self._on_events(events)
            except StoreUnavailable as exc:
                log.warning("%s: store unavailable (%s); keeping current state",
                            self.net.name, exc.details)
                if watch is not None:
                    watch.close()
                watch = None
                next_renew = min(next_renew, time.monotonic() + 1.0)
                self._stop.wait(0.5)
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("%s: overlay loop error", self.net.name)
                self._stop.wait(0.5)
        if watch is not None:
            watch.close()

    def status(self) -> dict:
        return {
            "subnet": self.lease.subnet if self.lease else None,
            "public_ip": self.lease.public_ip if self.lease else None,
            "backend": self.lease.backend if self.lease else {},
            "peers": sorted(p.node for p in self.peers.values()),
            "errors": sorted(self.errors.values()),
        }


class OverlayManager:
    """Starts a keeper for every overlay network in the store (and on first use)."""

    def __init__(self, store: Store, ctx: DriverContext, drivers, node: str,  # type: ignore[no-untyped-def]
                 public_ip: str | None, timing: Timing) -> None:
        self.store = store
        self.ctx = ctx
        self.drivers = drivers  # name -> Driver (from Endpoints.driver)
        self.node = node
        self.public_ip = public_ip
        self.timing = timing
        self.keepers: dict[str, OverlayKeeper] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        ctx.state["overlay_manager"] = self

    def ensure(self, net: Network) -> OverlayKeeper:
        with self._lock:
            keeper = self.keepers.get(net.name)
            if keeper is None:
                keeper = OverlayKeeper(self.store, net, self.drivers(net.driver), self.node,
                                       self.public_ip, self.timing)
                keeper.start()
                self.keepers[net.name] = keeper
                self.errors.pop(net.name, None)
            return keeper

    def start_all(self) -> None:
        for net in networks.list_all(self.store):
            if net.driver in networks.OVERLAY_DRIVERS and net.name not in self.keepers:
                try:
                    self.ensure(net)
                except PodnetError as exc:
                    self.errors[net.name] = str(exc)
                    log.error("%s: %s", net.name, exc)

    def watch_networks(self) -> None:
        """Pick up overlay networks created after start (polls with the resync period)."""
        while not self._stop.wait(min(self.timing.resync_period, 2.0)):
            try:
                self.start_all()
            except StoreUnavailable:
                pass
            except Exception:  # noqa: BLE001
                log.exception("network scan failed")

    def stop(self) -> None:
        self._stop.set()
        for keeper in self.keepers.values():
            keeper.stop()

    def status(self) -> dict:
        leases_ = {name: k.status() for name, k in self.keepers.items()}
        errors = [f"{name}: {e}" for name, e in self.errors.items()]
        for name, k in self.keepers.items():
            errors += [f"{name}: {e}" for e in k.errors.values()]
        return {"leases": leases_, "errors": errors}
