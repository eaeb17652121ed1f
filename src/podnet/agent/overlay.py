"""The agent's overlay loop, one per overlay network (flannel's subnet manager + backend).

Start: the backend registers the network (creates its devices), this host leases a
subnet (the remembered one if possible), the backend sets up its side of the lease,
the pod driver makes the pod bridge with the lease's gateway, every peer is programmed.
Then one thread loops: take batches of lease events from a watch and add/remove peers;
renew the lease `renew_margin` seconds before it expires; every `resync_period`
seconds re-list all leases and re-apply every peer (restoring neighbour, FDB entries
and routes deleted behind our back) and prune what no lease explains. When the store is
unreachable, nothing is withdrawn: pods keep talking on the last known state, and a
full resync runs as soon as the store answers again.

The keeper is also where CNI requests get an overlay's addressing (`lease_for`): the
lease it holds and the pod MTU its backend computed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from podnet.backends.overlay import BACKENDS, get_backend
from podnet.backends.overlay.base import BackendNetwork, gateway_of
from podnet.backends.overlay.config import OverlayConfig, from_network
from podnet.drivers import PodDrivers
from podnet.errors import Conflict, PodnetError, StoreUnavailable
from podnet.kernel import netns
from podnet.kernel.netns import Netlink
from podnet.kernel.underlay import Underlay, find
from podnet.model import Addressing, Network
from podnet.resources import HostLease, LeaseEvent, Resources

log = logging.getLogger("podnet.agent")


@dataclass
class Timing:
    lease_ttl: float = 60.0
    renew_margin: float = 20.0
    resync_period: float = 10.0


class OverlayKeeper:
    def __init__(self, resources: Resources, net: Network, drivers: PodDrivers, node: str,
                 public_ip: str | None, timing: Timing, run_dir: str) -> None:
        self.resources = resources
        self.net = net
        self.pod_driver = drivers.for_network(net.driver)
        self.backend = get_backend(net.driver, node=node, run_dir=run_dir)
        self.node = node
        self.public_ip = public_ip
        self.timing = timing
        self.cfg: OverlayConfig = from_network(net)
        self.lease: HostLease | None = None
        self.under: Underlay | None = None
        self.bnet: BackendNetwork | None = None
        self.peers: dict[str, HostLease] = {}
        self.errors: dict[str, str] = {}
        self.synced_revision = 0  # store revision of the last complete resync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        with netns.iproute() as nl:
            self.under = find(nl, self.public_ip)
            memory = self.resources.leases.remembered(self.cfg.network, self.node)
            self.bnet = self.backend.register(nl, self.cfg, self.under, memory)
            self.lease = self.resources.leases.acquire(
                self.cfg.network, self.cfg.subnets(), self.node, self.under.address,
                self.bnet.mtu, self.bnet.lease_data, self.timing.lease_ttl)
            self._setup_host(nl)
        log.info("%s: leased %s (public ip %s)", self.net.name, self.lease.subnet,
                 self.lease.public_ip)
        self.resync()
        self._thread = threading.Thread(target=self._loop, name=f"overlay-{self.net.name}",
                                        daemon=True)
        self._thread.start()

    def _setup_host(self, nl: Netlink) -> None:
        """The backend's side of our lease, then the pod bridge with the lease's gateway."""
        assert self.bnet is not None and self.lease is not None
        self.bnet.setup(nl, self.lease)
        self.pod_driver.ensure_network(self.net, self.addressing())

    def addressing(self) -> Addressing:
        assert self.bnet is not None and self.lease is not None
        return Addressing.via_gateway(self.lease.subnet, gateway_of(self.lease.subnet),
                                      self.bnet.mtu)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    # -- peers ------------------------------------------------------------------------
    def _apply_peer(self, nl: Netlink, peer: HostLease, *, force: bool = False) -> None:
        """Program a peer. A lease renewal (same address and backend data) changes nothing
        in the kernel, so it is skipped unless `force` (the resync re-applies everything)."""
        assert self.lease and self.bnet
        old = self.peers.get(peer.subnet)
        same = old is not None and (old.node, old.public_ip, old.backend) == \
            (peer.node, peer.public_ip, peer.backend)
        if same and not force and peer.node not in self.errors:
            self.peers[peer.subnet] = peer
            return
        try:
            if old and not same:
                self.bnet.remove_peer(nl, old)
            self.bnet.add_peer(nl, self.lease, peer)
            self.errors.pop(peer.node, None)
        except PodnetError as exc:
            if self.errors.get(peer.node) != str(exc):
                log.error("%s: %s", self.net.name, exc)
            self.errors[peer.node] = str(exc)
        self.peers[peer.subnet] = peer

    def _withdraw(self, nl: Netlink, subnet: str) -> None:
        peer = self.peers.pop(subnet, None)
        if peer is not None and self.bnet is not None:
            try:
                self.bnet.remove_peer(nl, peer)
            except PodnetError as exc:
                log.error("%s: withdrawing %s: %s", self.net.name, peer.node, exc)
            self.errors.pop(peer.node, None)
            log.info("%s: withdrew peer %s (%s)", self.net.name, peer.node, subnet)

    def resync(self) -> None:
        """Re-apply every peer from a fresh listing; prune what no lease explains."""
        assert self.lease and self.bnet
        revision = self.resources.revision()
        current = [p for p in self.resources.leases.list(self.cfg.network)
                   if p.node != self.node]
        with netns.iproute() as nl:
            self._setup_host(nl)
            for subnet in set(self.peers) - {p.subnet for p in current}:
                self._withdraw(nl, subnet)
            for peer in current:
                self._apply_peer(nl, peer, force=True)
            self.bnet.prune(nl, self.lease, current)
        self.synced_revision = revision

    def _on_events(self, events: list[LeaseEvent]) -> None:
        with netns.iproute() as nl:
            for ev in events:
                if ev.kind == "put" and ev.lease is not None:
                    if ev.lease.node != self.node:
                        self._apply_peer(nl, ev.lease)
                elif ev.kind == "delete":
                    if self.lease and ev.subnet == self.lease.subnet:
                        log.warning("%s: our lease vanished; renewing now", self.net.name)
                        self._renew()
                    else:
                        self._withdraw(nl, ev.subnet)

    # -- loop -------------------------------------------------------------------------
    def _renew(self) -> None:
        assert self.lease
        try:
            self.resources.leases.renew(self.lease, self.timing.lease_ttl)
        except Conflict:
            log.error("%s: lease %s was taken by another node; leasing anew",
                      self.net.name, self.lease.subnet)
            self.start_again()

    def start_again(self) -> None:
        assert self.lease and self.under and self.bnet
        self.lease = self.resources.leases.acquire(
            self.cfg.network, self.cfg.subnets(), self.node, self.under.address,
            self.bnet.mtu, self.bnet.lease_data, self.timing.lease_ttl)

    def _loop(self) -> None:
        watch = None
        next_renew = time.monotonic() + self.timing.lease_ttl - self.timing.renew_margin
        next_resync = time.monotonic() + self.timing.resync_period
        need_resync = False
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if watch is None:
                    start = self.resources.revision()
                    watch = self.resources.leases.watch(self.cfg.network, start)
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

    def status(self) -> dict[str, Any]:
        return {
            "subnet": self.lease.subnet if self.lease else None,
            "public_ip": self.lease.public_ip if self.lease else None,
            "pod_mtu": self.bnet.mtu if self.bnet else None,
            "backend": self.lease.backend if self.lease else {},
            "peers": sorted(p.node for p in self.peers.values()),
            "errors": sorted(self.errors.values()),
            "last_full_sync_revision": self.synced_revision,
        }


class OverlayManager:
    """Starts a keeper for every overlay network in the store (and on first use), and
    hands CNI requests the lease of the keeper it started."""

    def __init__(self, resources: Resources, drivers: PodDrivers, node: str,
                 public_ip: str | None, timing: Timing, run_dir: str) -> None:
        self.resources = resources
        self.drivers = drivers
        self.node = node
        self.public_ip = public_ip
        self.timing = timing
        self.run_dir = run_dir
        self.keepers: dict[str, OverlayKeeper] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def ensure(self, net: Network) -> OverlayKeeper:
        with self._lock:
            keeper = self.keepers.get(net.name)
            if keeper is None:
                keeper = OverlayKeeper(self.resources, net, self.drivers, self.node,
                                       self.public_ip, self.timing, self.run_dir)
                keeper.start()
                self.keepers[net.name] = keeper
                self.errors.pop(net.name, None)
            return keeper

    def lease_for(self, net: Network) -> HostLease | None:
        keeper = self.ensure(net)
        if keeper.lease is None or keeper.bnet is None:
            return None
        lease = keeper.lease
        return HostLease(lease.network, lease.node, lease.subnet, lease.public_ip,
                         keeper.bnet.mtu, lease.backend, lease.revision)

    def start_all(self) -> None:
        for net in self.resources.list_networks():
            if net.driver in BACKENDS and net.name not in self.keepers:
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

    def status(self) -> dict[str, Any]:
        leases_ = {name: k.status() for name, k in self.keepers.items()}
        errors = [f"{name}: {e}" for name, e in self.errors.items()]
        for name, k in self.keepers.items():
            errors += [f"{name}: {e}" for e in k.errors.values()]
        return {"leases": leases_, "errors": errors}
