"""Attach and detach ports: the one code path behind CNI, Docker and `podnet pod`.

Two phases, as Docker's CreateEndpoint and Join split them:
  create_port  the port record (address allocated, MAC chosen) and its host side
               prepared by the pod driver (with the sandbox known, the pod end is made
               directly inside it)
  plug         the port's interface configured inside its sandbox; the port ACTIVE
CNI ADD is `attach`: both, in one call. Each phase is rolled back whole when it fails,
and `detach` succeeds on every half state. The coordinator only orders the steps; the
resource layer and the pod drivers do the work.
"""

from __future__ import annotations

import contextlib
import time

from podnet.agent.addressing import Addressings, LeaseSource, StoredLeases
from podnet.drivers import PodDrivers
from podnet.drivers.base import PodDriver
from podnet.errors import NotFound
from podnet.kernel import netns as kns
from podnet.model import PORT_ACTIVE, Addressing, FixedIP, Network, Port
from podnet.resources import Resources


class Attacher:
    def __init__(self, resources: Resources, node: str, *,
                 leases: LeaseSource | None = None, drivers: PodDrivers | None = None) -> None:
        self.resources = resources
        self.node = node
        self.drivers = drivers or PodDrivers()
        self.addressings = Addressings(resources, node, leases or StoredLeases(resources, node))

    def pod_driver(self, net: Network) -> PodDriver:
        return self.drivers.for_network(net.driver)

    def addressing(self, net: Network) -> Addressing:
        return self.addressings.for_network(net)

    # -- phase one ----------------------------------------------------------------------
    def create_port(self, net: Network, *, device_id: str, ifname: str, pod: str = "",
                    labels: dict[str, str] | None = None, frontend: str = "cni",
                    device_owner: str = "", sandbox: str | None = None,
                    mac_address: str | None = None, ip_address: str | None = None) -> Port:
        """A port with its address and MAC, its host side prepared (see module doc)."""
        addressing = self.addressing(net)
        port = Port(
            id="", network=net.name, device_id=device_id, ifname=ifname,
            device_owner=device_owner or frontend, frontend=frontend, host=self.node,
            pod=pod, mac_address=mac_address, labels=dict(labels or {}),
            fixed_ips=[FixedIP(ip_address, addressing.subnet or "")] if ip_address else [],
            created=time.time(),
        )
        port = self.resources.create_port(port, addressing)
        with contextlib.ExitStack() as rollback:
            rollback.callback(self.resources.delete_port, port)
            port = self.pod_driver(net).prepare(net, port, addressing, sandbox)
            rollback.pop_all()
        return port

    # -- phase two ----------------------------------------------------------------------
    def plug(self, net: Network, port: Port, sandbox: str) -> Port:
        """Configure the port inside its sandbox and record it ACTIVE."""
        port = self.pod_driver(net).plug(net, port, self.addressing(net), sandbox)
        port.status = PORT_ACTIVE
        return self.resources.update_port(port)

    # -- both -------------------------------------------------------------------------------
    def attach(self, net: Network, *, device_id: str, ifname: str, sandbox: str, pod: str,
               labels: dict[str, str] | None = None, frontend: str = "cni") -> Port:
        kns.require(sandbox)  # code 3 before anything is allocated
        port = self.create_port(net, device_id=device_id, ifname=ifname, pod=pod,
                                labels=labels, frontend=frontend, sandbox=sandbox)
        with contextlib.ExitStack() as rollback:
            rollback.callback(self.resources.delete_port, port)
            rollback.callback(self.pod_driver(net).unplug, net, port)
            port = self.plug(net, port, sandbox)
            rollback.pop_all()
        return port

    # -- removal --------------------------------------------------------------------------
    def detach(self, net: Network, *, device_id: str, ifname: str) -> Port | None:
        """Remove a port in whatever state it is; returns what was recorded (None: nothing)."""
        port = self.resources.find_port(net.name, device_id, ifname)
        probe = port or Port(id="", network=net.name, device_id=device_id, ifname=ifname)
        self.pod_driver(net).unplug(net, probe)
        if port is not None:
            self.resources.delete_port(port)
            if not port.fixed_ips:  # an attach that died before recording its address
                self.resources.release_addresses_of(net.name, device_id, ifname)
        else:
            self.resources.release_addresses_of(net.name, device_id, ifname)
        return port

    def check(self, net: Network, *, device_id: str, ifname: str, sandbox: str) -> Port:
        kns.require(sandbox)
        port = self.resources.find_port(net.name, device_id, ifname)
        if port is None:
            raise NotFound(f"no attachment of {device_id}/{ifname} on {net.name}", kind="port")
        self.pod_driver(net).check(net, port, self.addressing(net))
        return port

    def gc(self, net: Network, valid: set[tuple[str, str]]) -> list[Port]:
        """Detach every port of `net` whose (device id, ifname) is not valid."""
        removed = []
        for port in self.resources.list_ports(net.name):
            if (port.device_id, port.ifname) not in valid:
                self.detach(net, device_id=port.device_id, ifname=port.ifname)
                removed.append(port)
        self.resources.gc_addresses(net.name, valid)
        return removed

    def remove_network(self, name: str, *, force: bool = False) -> Network:
        """Delete a network (with force, detaching its ports on this host first) and its
        host objects here."""
        net = self.resources.get_network(name)
        if force:
            for port in self.resources.list_ports(net.name):
                self.detach(net, device_id=port.device_id, ifname=port.ifname)
        self.resources.delete_network(name)
        self.pod_driver(net).teardown(net)
        return net


def label_pod(resources: Resources, pod: str, changes: dict[str, str]) -> list[Port]:
    """Set labels on every port of a pod (named as `pod ls` lists it, by its container id,
    or by the tail of a namespaced name); an empty value removes the label."""
    found = []
    for port in resources.list_ports():
        if pod in (port.pod, port.device_id) or port.pod.rsplit("/", 1)[-1] == pod:
            port.labels.update(changes)
            port.labels = {k: v for k, v in port.labels.items() if v != ""}
            found.append(resources.update_port(port))
    if not found:
        raise NotFound(f"pod {pod!r} is not attached to any network", kind="pod")
    return found
