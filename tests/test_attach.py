"""Two-phase attach on real namespaces: create_port (host side prepared, the pod end
waiting outside, as Docker's CreateEndpoint leaves it), plug (moved in, configured),
every half state detachable, and a failure after the veth exists rolled back whole.

The attacher runs in this process on a thread that joined the test's host namespace
(kernel/netns.run_in), so it touches nothing of the machine's own namespace.
"""

from __future__ import annotations

import pytest
from podnet_fixtures import Namespaces, links, sh

from podnet.agent.attach import Attacher
from podnet.drivers import veth
from podnet.drivers.base import waiting_name
from podnet.errors import KERNEL_FAILURE, PodnetError
from podnet.kernel import netns as kns
from podnet.model import Network, Port
from podnet.resources import open_resources


@pytest.fixture
def attacher(store_path: str):  # type: ignore[no-untyped-def]
    res = open_resources(store_path)
    res.create_network(Network(name="two", subnet="10.94.0.0/24"))
    try:
        yield Attacher(res, "test")
    finally:
        res.close()


def in_ns(ns: str, fn):  # type: ignore[no-untyped-def]
    return kns.run_in(ns, fn)


def test_create_then_plug_as_docker_does(attacher: Attacher, ns: Namespaces,
                                         host_ns: str) -> None:
    net = attacher.resources.get_network("two")
    port = in_ns(host_ns, lambda: attacher.create_port(
        net, device_id="ep1", ifname="eth0", frontend="docker", mac_address="02:42:0a:5e:00:07"))
    assert port.status == "DOWN" and port.ip and port.frontend == "docker"
    waiting = waiting_name(port)
    have = links(host_ns)
    assert {port.host_ifname, waiting, "pnbr-two"} <= have
    assert "02:42:0a:5e:00:07" in sh(host_ns, f"ip link show dev {waiting}")
    assert "master pnbr-two" in sh(host_ns, f"ip link show dev {port.host_ifname}")
    stored = attacher.resources.find_port("two", "ep1", "eth0")
    assert stored is not None and stored.fixed_ips == port.fixed_ips

    pod = ns.add("pod")
    port = in_ns(host_ns, lambda: attacher.plug(net, port, f"/run/netns/{pod}"))
    assert port.status == "ACTIVE" and port.sandbox == f"/run/netns/{pod}"
    assert waiting not in links(host_ns)
    assert f"{port.address}" in sh(pod, "ip -o addr show dev eth0")
    assert "02:42:0a:5e:00:07" in sh(pod, "ip link show dev eth0")
    assert "default via 10.94.0.1" in sh(pod, "ip route")
    sh(pod, "ping -c 1 -W 2 10.94.0.1")
    assert attacher.resources.find_port("two", "ep1", "eth0").status == "ACTIVE"

    in_ns(host_ns, lambda: attacher.detach(net, device_id="ep1", ifname="eth0"))
    assert "eth0" not in links(pod) and port.host_ifname not in links(host_ns)
    assert attacher.resources.address_owners("two") == {}


def test_every_half_state_detaches(attacher: Attacher, host_ns: str) -> None:
    net = attacher.resources.get_network("two")
    before = links(host_ns)
    # nothing at all
    assert in_ns(host_ns, lambda: attacher.detach(net, device_id="x", ifname="eth0")) is None
    # prepared, never plugged (Docker: CreateEndpoint, then DeleteEndpoint)
    port = in_ns(host_ns, lambda: attacher.create_port(net, device_id="ep2", ifname="eth0"))
    assert waiting_name(port) in links(host_ns)
    gone = in_ns(host_ns, lambda: attacher.detach(net, device_id="ep2", ifname="eth0"))
    assert gone is not None and gone.id == port.id
    assert links(host_ns) - before <= {"pnbr-two"}
    assert attacher.resources.list_ports("two") == []
    assert attacher.resources.address_owners("two") == {}
    # a port record whose veth was deleted behind our back
    port = in_ns(host_ns, lambda: attacher.create_port(net, device_id="ep3", ifname="eth0"))
    sh(host_ns, f"ip link del {port.host_ifname}")
    in_ns(host_ns, lambda: attacher.detach(net, device_id="ep3", ifname="eth0"))
    assert attacher.resources.list_ports("two") == []
    # twice
    in_ns(host_ns, lambda: attacher.detach(net, device_id="ep3", ifname="eth0"))


def test_failure_after_the_veth_exists_rolls_back(attacher: Attacher, ns: Namespaces,
                                                  host_ns: str, monkeypatch) -> None:
    net = attacher.resources.get_network("two")
    pod = ns.add("pod")
    real = veth.configure_pod_side
    seen: list[set[str]] = []

    def configure_then_fail(host, port: Port, sandbox: str, routes):  # type: ignore[no-untyped-def]
        real(host, port, sandbox, routes)  # the pod's eth0 is up with its address now
        seen.append(links(pod))
        raise PodnetError(KERNEL_FAILURE, "injected failure after the veth exists")

    monkeypatch.setattr(veth, "configure_pod_side", configure_then_fail)
    before = links(host_ns) | {"pnbr-two"}
    with pytest.raises(PodnetError) as err:
        in_ns(host_ns, lambda: attacher.attach(net, device_id="c1", ifname="eth0",
                                               sandbox=f"/run/netns/{pod}", pod="p"))
    assert err.value.code == KERNEL_FAILURE
    assert seen and "eth0" in seen[0]  # the failure came after the pod end was configured
    assert "eth0" not in links(pod)
    assert links(host_ns) <= before
    assert attacher.resources.list_ports("two") == []
    assert attacher.resources.address_owners("two") == {}
