"""The CNI plugin driven exactly as a runtime drives it: a separate process, environment
plus stdin, inside a host namespace, with the agent running (and without it)."""

from __future__ import annotations

import subprocess

import pytest
from podnet_fixtures import CniRunner, Namespaces, kernel_state, links, sh


def conf(name: str = "net1", version: str = "1.0.0", **extra) -> dict:
    return {"cniVersion": version, "name": name, "type": "podnet-cni",
            "subnet": "10.91.0.0/24", **extra}


def pod_ip(res) -> str:
    return res.out["ips"][0]["address"].split("/")[0]


def test_version(cni: CniRunner) -> None:
    res = cni("VERSION", {"cniVersion": "1.1.0"})
    assert res.rc == 0, res.raw
    assert res.out["cniVersion"] == "1.1.0"
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(res.out["supportedVersions"])


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_result_and_datapath(cni: CniRunner, ns: Namespaces, host_ns: str, version) -> None:
    p1, p2 = ns.add("p1"), ns.add("p2")
    c = conf(version=version, mtu=1400)
    r1 = cni("ADD", c, container_id="c1", netns=f"/run/netns/{p1}")
    r2 = cni("ADD", c, container_id="c2", netns=f"/run/netns/{p2}")
    assert r1.rc == 0 and r2.rc == 0, r1.raw + r2.raw
    out = r1.out
    assert out["cniVersion"] == version
    ifaces = out["interfaces"]
    assert ifaces[-1]["name"] == "eth0" and ifaces[-1]["sandbox"] == f"/run/netns/{p1}"
    ip = out["ips"][0]
    assert ip["address"] == "10.91.0.2/24" and ip["gateway"] == "10.91.0.1"
    assert ifaces[ip["interface"]]["name"] == "eth0"
    assert ("version" in ip) == (version == "0.4.0")
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.91.0.1"}]
    # independent witnesses: the kernel has what the result says
    assert "10.91.0.2/24" in sh(p1, "ip -o addr show dev eth0")
    assert "mtu 1400" in sh(p1, "ip link show dev eth0")
    assert "default via 10.91.0.1" in sh(p1, "ip route")
    assert ifaces[-1]["mac"] in sh(p1, "ip link show dev eth0")
    host_if = ifaces[1]["name"]
    assert "hairpin on" in sh(host_ns, f"ip -d link show dev {host_if}")
    assert "master pnbr-net1" in sh(host_ns, f"ip link show dev {host_if}")
    sh(p1, f"ping -c 2 -W 2 {pod_ip(r2)}")
    sh(p1, "ping -c 1 -W 2 10.91.0.1")


def test_del_is_idempotent_and_leaves_nothing(cni: CniRunner, ns: Namespaces, host_ns) -> None:
    p1 = ns.add("p1")
    before = links(host_ns)
    r = cni("ADD", conf(), container_id="c1", netns=f"/run/netns/{p1}")
    assert r.rc == 0, r.raw
    host_if = r.out["interfaces"][1]["name"]
    assert host_if in links(host_ns)
    # containerd sends DEL with an empty CNI_NETNS and a prevResult
    d = cni("DEL", {**conf(), "prevResult": r.out}, container_id="c1", netns="")
    assert d.rc == 0, d.raw
    assert links(host_ns) - before == {"pnbr-net1"}
    assert "eth0" not in links(p1)
    again = cni("DEL", conf(), container_id="c1", netns=f"/run/netns/{p1}")
    assert again.rc == 0, again.raw
    # the address was released: the next pod gets it again
    r2 = cni("ADD", conf(), container_id="c2", netns=f"/run/netns/{p1}")
    assert r2.out["ips"][0]["address"] == r.out["ips"][0]["address"]


def test_del_after_namespace_is_gone(cni: CniRunner, ns: Namespaces, host_ns) -> None:
    p1 = ns.add("p1")
    r = cni("ADD", conf(), container_id="c1", netns=f"/run/netns/{p1}")
    assert r.rc == 0
    subprocess.run(["ip", "netns", "del", p1], check=True)
    d = cni("DEL", conf(), container_id="c1", netns=f"/run/netns/{p1}")
    assert d.rc == 0, d.raw
    assert not [n for n in links(host_ns) if n.startswith("pnv")]


def test_check(cni: CniRunner, ns: Namespaces) -> None:
    p1 = ns.add("p1")
    r = cni("ADD", conf(), container_id="c1", netns=f"/run/netns/{p1}")
    c = {**conf(), "prevResult": r.out}
    ok = cni("CHECK", c, container_id="c1", netns=f"/run/netns/{p1}")
    assert ok.rc == 0, ok.raw
    sh(p1, f"ip addr del {r.out['ips'][0]['address']} dev eth0")
    bad = cni("CHECK", c, container_id="c1", netns=f"/run/netns/{p1}")
    assert bad.rc != 0 and bad.out["code"] == 102, bad.raw
    assert "address" in bad.out["msg"]


def test_status_and_gc_1_1(cni: CniRunner, ns: Namespaces, host_ns: str) -> None:
    c = conf(version="1.1.0")
    st = cni("STATUS", c)
    assert st.rc == 0 and st.raw.strip() == "", st.raw
    pods = [ns.add(f"p{i}") for i in range(3)]
    results = [cni("ADD", c, container_id=f"c{i}", netns=f"/run/netns/{p}")
               for i, p in enumerate(pods)]
    assert all(r.rc == 0 for r in results)
    gc = {**c, "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    res = cni("GC", gc)
    assert res.rc == 0, res.raw
    assert "eth0" not in links(pods[0]) and "eth0" not in links(pods[2])
    assert "eth0" in links(pods[1])
    # freed addresses are handed out again
    again = cni("ADD", c, container_id="c9", netns=f"/run/netns/{pods[0]}")
    assert again.out["ips"][0]["address"] == results[0].out["ips"][0]["address"]


def test_status_fails_when_store_unusable(host_ns: str, cni_plugin: str, tmp_path) -> None:
    bad = CniRunner(host_ns, cni_plugin, {"PODNET_AGENT_SOCKET": str(tmp_path / "none.sock"),
                                          "PODNET_STORE": "/proc/podnet-no/such.db"})
    res = bad("STATUS", conf(version="1.1.0"))
    assert res.rc != 0 and res.out["code"] == 50, res.raw


def test_in_process_without_agent(host_ns: str, cni_plugin: str, ns: Namespaces, tmp_path):
    runner = CniRunner(host_ns, cni_plugin, {
        "PODNET_AGENT_SOCKET": str(tmp_path / "absent.sock"),
        "PODNET_STORE": str(tmp_path / "db")})
    p1, p2 = ns.add("p1"), ns.add("p2")
    r1 = runner("ADD", conf(), container_id="c1", netns=f"/run/netns/{p1}")
    r2 = runner("ADD", conf(), container_id="c2", netns=f"/run/netns/{p2}")
    assert r1.rc == 0 and r2.rc == 0, r1.raw + r2.raw
    sh(p1, f"ping -c 1 -W 2 {pod_ip(r2)}")
    assert runner("DEL", conf(), container_id="c1", netns="").rc == 0
    assert "eth0" not in links(p1)


def test_conflist_keys_select_agent_and_store(host_ns, cni_plugin, agent, ns: Namespaces):
    runner = CniRunner(host_ns, cni_plugin)  # no PODNET_* environment at all
    p1 = ns.add("p1")
    c = conf(agentSocket=agent.socket, store=agent.store)
    r = runner("ADD", c, container_id="c1", netns=f"/run/netns/{p1}")
    assert r.rc == 0, r.raw
    assert "podnet-agent" not in r.raw
    log = open(agent.log).read()
    assert "serving on" in log


def test_null_driver(cni: CniRunner, ns: Namespaces) -> None:
    p1 = ns.add("p1")
    sh(p1, "ip link set lo down")
    c = {"cniVersion": "1.0.0", "name": "nothing", "type": "podnet-cni", "driver": "null"}
    r = cni("ADD", c, container_id="c1", netns=f"/run/netns/{p1}")
    assert r.rc == 0, r.raw
    assert "ips" not in r.out
    assert links(p1) == {"lo"} and "UP" in sh(p1, "ip link show lo")


def test_same_pod_containers_share_namespace(cni: CniRunner, ns: Namespaces) -> None:
    p1 = ns.add("p1")
    r = cni("ADD", conf(), container_id="c1", netns=f"/run/netns/{p1}")
    assert r.rc == 0
    # a second "container" of the pod joins the same namespace: it talks over lo
    sh(p1, "ping -c 1 -W 1 127.0.0.1")
    sh(p1, f"ping -c 1 -W 1 {pod_ip(r)}")


def test_masquerade(cni: CniRunner, ns: Namespaces, host_ns: str) -> None:
    """ipMasq: traffic leaving the pod subnet reaches the outside with the host's address."""
    outside = ns.add("out")
    sh(host_ns, f"ip link add up0 type veth peer name up1 netns {outside}")
    sh(host_ns, "ip addr add 192.168.240.1/24 dev up0 && ip link set up0 up")
    sh(outside, "ip addr add 192.168.240.2/24 dev up1 && ip link set up1 up")
    p1 = ns.add("p1")
    r = cni("ADD", conf(ipMasq=True), container_id="c1", netns=f"/run/netns/{p1}")
    assert r.rc == 0, r.raw
    assert "podnet:net1" in sh(host_ns, "nft list table ip podnet")
    assert sh(host_ns, "cat /proc/sys/net/ipv4/ip_forward").strip() == "1"
    # outside has no route back to 10.91.0.0/24: only a masqueraded ping can be answered
    sh(p1, "ping -c 2 -W 2 192.168.240.2")
    # the host's conntrack table shows the pod's flow translated to the host's address
    flows = sh(host_ns, "conntrack -L -p icmp 2>/dev/null")
    assert "src=10.91.0.2 dst=192.168.240.2" in flows and "dst=192.168.240.1" in flows, flows


def test_concurrent_adds_get_distinct_addresses(cni: CniRunner, ns: Namespaces) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pods = [ns.add(f"p{i}") for i in range(40)]
    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(
            lambda ip: cni("ADD", conf(), container_id=f"c{ip[0]}", netns=f"/run/netns/{ip[1]}"),
            enumerate(pods)))
    assert all(r.rc == 0 for r in results), [r.raw for r in results if r.rc]
    addresses = [r.out["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == 40


# -- bad input: the right code, a clear message, and nothing changed ---------------------
def _bad(cni: CniRunner, host_ns: str, pod: str, **kw):
    before = kernel_state(host_ns), kernel_state(pod)
    res = cni(**kw)
    assert res.rc != 0, res.raw
    assert res.out is not None and res.out["msg"], res.raw
    assert (kernel_state(host_ns), kernel_state(pod)) == before
    return res.out


def test_bad_input(cni: CniRunner, ns: Namespaces, host_ns: str) -> None:
    p = ns.add("p1")
    net = f"/run/netns/{p}"
    out = _bad(cni, host_ns, p, command="ADD", conf=b"{not json", container_id="c", netns=net)
    assert out["code"] == 6
    out = _bad(cni, host_ns, p, command="ADD", conf=conf(version="9.9.9"), container_id="c",
               netns=net)
    assert out["code"] == 1 and "9.9.9" in out["msg"]
    out = _bad(cni, host_ns, p, command="ADD", conf=conf(), netns=net)
    assert out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]
    out = _bad(cni, host_ns, p, command="ADD", conf=conf(), container_id="c",
               netns="/run/netns/pnt-does-not-exist")
    assert out["code"] == 3
    out = _bad(cni, host_ns, p, command="ADD",
               conf={"cniVersion": "1.0.0", "name": "nope", "type": "podnet-cni"},
               container_id="c", netns=net)
    assert out["code"] == 7 and "nope" in out["msg"]
    out = _bad(cni, host_ns, p, command="ADD", conf=conf(subnet="10.91.0.5/24"),
               container_id="c", netns=net)
    assert out["code"] == 7 and "host bits" in out["msg"]
    out = _bad(cni, host_ns, p, command="ADD", conf=conf(subnet="banana"), container_id="c",
               netns=net)
    assert out["code"] == 7
    out = _bad(cni, host_ns, p, command="ADD", conf=conf(ipam={"type": "host-local"}),
               container_id="c", netns=net)
    assert out["code"] == 2


def test_duplicate_add_and_exhausted_subnet(cni: CniRunner, ns: Namespaces, host_ns) -> None:
    small = conf(name="tiny", subnet="10.92.0.0/30")  # one pod address after the gateway
    p1, p2 = ns.add("p1"), ns.add("p2")
    assert cni("ADD", small, container_id="c1", netns=f"/run/netns/{p1}").rc == 0
    out = _bad(cni, host_ns, p1, command="ADD", conf=small, container_id="c1",
               netns=f"/run/netns/{p1}")
    assert out["code"] == 101
    out = _bad(cni, host_ns, p2, command="ADD", conf=small, container_id="c2",
               netns=f"/run/netns/{p2}")
    assert out["code"] == 100 and "10.92.0.0/30" in out["msg"]


def test_kernel_failure_midway_rolls_back(cni: CniRunner, ns: Namespaces, host_ns) -> None:
    """eth0 already exists in the pod: the ADD fails after IPAM and leaves nothing."""
    p1, p2 = ns.add("p1"), ns.add("p2")
    sh(p1, "ip link add eth0 type veth peer name x0")
    out = _bad(cni, host_ns, p1, command="ADD", conf=conf(), container_id="c1",
               netns=f"/run/netns/{p1}")
    assert out["code"] == 102
    # the address it had taken is free again
    r = cni("ADD", conf(), container_id="c2", netns=f"/run/netns/{p2}")
    assert r.out["ips"][0]["address"] == "10.91.0.2/24"


def test_labels_from_runtime_config(cni: CniRunner, ns: Namespaces, host_ns: str) -> None:
    p1 = ns.add("p1")
    c = {**conf(), "runtimeConfig": {"labels": {"app": "web", "tier": "1"}}}
    r = cni("ADD", c, container_id="c1", netns=f"/run/netns/{p1}",
            args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0")
    assert r.rc == 0, r.raw
    from podnet.resources import open_resources

    with open_resources(cni.extra_env["PODNET_STORE"]) as res:
        (port,) = res.list_ports("net1")
    assert port.pod == "shop/web-0" and port.labels == {"app": "web", "tier": "1"}
    assert port.frontend == "cni" and port.sandbox == f"/run/netns/{p1}"
    assert port.status == "ACTIVE" and port.mac_address == r.out["interfaces"][-1]["mac"]


def test_agent_does_not_leak_descriptors(cni: CniRunner, ns: Namespaces, agent) -> None:
    import os

    def fds() -> int:
        return len(os.listdir(f"/proc/{agent.proc.pid}/fd"))

    pods = [ns.add(f"p{i}") for i in range(10)]
    cni("ADD", conf(), container_id="warm", netns=f"/run/netns/{pods[0]}")
    cni("DEL", conf(), container_id="warm", netns="")
    before = fds()
    for _ in range(3):
        for i, p in enumerate(pods):
            assert cni("ADD", conf(), container_id=f"c{i}", netns=f"/run/netns/{p}").rc == 0
        for i in range(len(pods)):
            assert cni("DEL", conf(), container_id=f"c{i}", netns="").rc == 0
    assert fds() - before < 10, (before, fds())
