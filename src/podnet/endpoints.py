"""Attach and detach pods: the one code path behind CNI, `podnet pod`, and the agent.

The coordinator only orders the steps; the store (ipam, networks) and the kernel
(drivers) do the work. A failed attach releases its address and removes its links;
detach never fails on state that is already gone.
"""

from __future__ import annotations

import contextlib
import time

from podnet import ipam, keys
from podnet.drivers import get_driver
from podnet.drivers.base import Driver, DriverContext
from podnet.errors import ALREADY_ATTACHED, NOT_FOUND, Conflict, PodnetError
from podnet.kernel import netns as kns
from podnet.model import Endpoint, Network, Sandbox
from podnet.store import Store


class Endpoints:
    def __init__(self, store: Store, node: str, run_dir: str = "/run/podnet") -> None:
        self.store = store
        self.ctx = DriverContext(store=store, node=node, run_dir=run_dir)
        self._drivers: dict[str, Driver] = {}

    def driver(self, name: str) -> Driver:
        if name not in self._drivers:
            self._drivers[name] = get_driver(name, self.ctx)
        return self._drivers[name]

    # -- attach -------------------------------------------------------------------
    def attach(
        self,
        net: Network,
        *,
        container_id: str,
        ifname: str,
        netns: str,
        pod: str,
        labels: dict[str, str] | None = None,
    ) -> Endpoint:
        kns.require(netns)  # code 3 before anything is allocated
        key = keys.endpoint(net.name, container_id, ifname)
        driver = self.driver(net.driver)
        pa = driver.addressing(net)
        ep = Endpoint(
            network=net.name, container_id=container_id, ifname=ifname, pod=pod,
            netns=netns, gateway=pa.gateway, labels=dict(labels or {}), created=time.time(),
        )
        with contextlib.ExitStack() as rollback:
            try:
                self.store.put(key, ep.to_dict(), revision=0)  # claims (container, ifname)
            except Conflict as exc:
                raise PodnetError(
                    ALREADY_ATTACHED,
                    f"container {container_id} already has {ifname} on network {net.name}",
                ) from exc
            rollback.callback(self.store.delete, key)
            if pa.subnet:
                reserved = [pa.gateway] if pa.gateway else []
                ep.address = ipam.allocate(
                    self.store, net.name, pa.subnet, container_id=container_id,
                    ifname=ifname, pod=pod, reserved=reserved,
                )
                rollback.callback(
                    ipam.release, self.store, net.name, ep.address, container_id=container_id
                )
            ep = driver.attach(net, ep)
            rollback.callback(driver.detach, net, ep)
            self.store.put(key, ep.to_dict())
            rollback.pop_all()
        return ep

    # -- detach -------------------------------------------------------------------
    def detach(self, net: Network, *, container_id: str, ifname: str) -> Endpoint | None:
        """Remove an attachment; returns what was recorded (None: nothing was)."""
        key = keys.endpoint(net.name, container_id, ifname)
        entry = self.store.get(key)
        ep = Endpoint.from_dict(entry.value) if entry else None
        probe = ep or Endpoint(net.name, container_id, ifname, pod="", netns="")
        self.driver(net.driver).detach(net, probe)
        if ep is not None and ep.address:
            ipam.release(self.store, net.name, ep.address, container_id=container_id)
        else:  # no record, or an ADD that died before recording its address: scan
            ipam.release_owner(self.store, net.name, container_id, ifname)
        if entry is not None:
            self.store.delete(key)
        return ep

    # -- check --------------------------------------------------------------------
    def check(self, net: Network, *, container_id: str, ifname: str, netns: str) -> Endpoint:
        kns.require(netns)
        entry = self.store.get(keys.endpoint(net.name, container_id, ifname))
        if entry is None:
            raise PodnetError(NOT_FOUND, f"no attachment of {container_id}/{ifname} on {net.name}")
        ep = Endpoint.from_dict(entry.value)
        self.driver(net.driver).check(net, ep)
        return ep

    # -- listing / gc ---------------------------------------------------------------
    def list(self, network: str | None = None) -> list[Endpoint]:
        prefix = keys.endpoint_prefix(network) if network else keys.ENDPOINTS
        return [Endpoint.from_dict(e.value) for e in self.store.list(prefix)]

    def sandboxes(self) -> list[Sandbox]:
        pods: dict[str, Sandbox] = {}
        for ep in self.list():
            sb = pods.setdefault(ep.pod, Sandbox(name=ep.pod, netns=ep.netns))
            sb.endpoints.append(f"{ep.network}/{ep.ifname}")
            sb.labels.update(ep.labels)
        return sorted(pods.values(), key=lambda s: s.name)

    def gc(self, net: Network, valid: set[tuple[str, str]]) -> list[Endpoint]:
        """Detach every attachment of `net` whose (container id, ifname) is not valid."""
        removed = []
        for ep in self.list(net.name):
            if (ep.container_id, ep.ifname) not in valid:
                self.detach(net, container_id=ep.container_id, ifname=ep.ifname)
                removed.append(ep)
        recorded = {ep.address.split("/")[0] for ep in self.list(net.name) if ep.address}
        for ip, owner in ipam.allocations(self.store, net.name).items():
            if (owner.get("container_id"), owner.get("ifname")) not in valid \
                    and ip not in recorded:
                ipam.release(self.store, net.name, ip)
        return removed
