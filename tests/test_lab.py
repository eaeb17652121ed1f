"""The lab (`podnet lab`, podnet.lab.Lab): construction, use and teardown.

Kernel and process claims are checked with `ip`, `ping` and /proc as independent
witnesses, not with the lab's own state file. Labs are named with the tests' prefix
(pnt + 4 hex), so their namespaces are pntXXXX-sw, pntXXXX-h1, pntXXXX-h1-p1, ...

Construction tests use the lab's `bridge` backend (per-host bridges, no overlay) so they
do not depend on the overlay drivers; the all-pairs tests run once per overlay backend
whose driver module exists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from podnet_fixtures import new_prefix, sh

from podnet.errors import PodnetError
from podnet.lab import Lab, Topo, state

needs_etcd = pytest.mark.skipif(not shutil.which("etcd"),
                                reason="etcd binary not installed (Debian etcd-server)")
DRIVER_MODULES = {"vxlan": "podnet.backends.overlay.vxlan",
                  "host-gw": "podnet.backends.overlay.hostgw",
                  "udp": "podnet.backends.overlay.udp"}


def needs_driver(backend: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(DRIVER_MODULES[backend]) is None
    return pytest.mark.skipif(missing, reason=f"overlay driver {DRIVER_MODULES[backend]} "
                              "not written yet")


def podnet(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "podnet", *args], capture_output=True,
                          text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"podnet {args}: rc={proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def lab_namespaces(name: str) -> list[str]:
    return sorted(n for n in sh(None, "ip netns list").split() if n.startswith(name + "-"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def assert_gone(name: str, pids: list[int]) -> None:
    assert lab_namespaces(name) == []
    assert [p for p in pids if alive(p)] == []
    assert not os.path.exists(state.lab_dir(name))
    assert not os.path.exists(state.run_dir(name))


@pytest.fixture(scope="module")
def blab() -> Iterator[Lab]:
    """2 hosts x 2 pods, per-host bridges, SQLite: the lab's construction without overlay."""
    with Lab(Topo(hosts=2, pods_per_host=2), backend="bridge", name=new_prefix(),
             lease_ttl=10, renew_margin=4, resync_period=2) as lab:
        yield lab


# -- construction ----------------------------------------------------------------------
def test_namespaces_underlay_agents_and_pods(blab: Lab) -> None:
    n = blab.name
    assert lab_namespaces(n) == sorted(f"{n}-{r}" for r in
                                       ("sw", "h1", "h2", "h1-p1", "h1-p2", "h2-p1", "h2-p2"))
    # underlay: eth0 with the planned address, reachable across the switch
    assert "172.30.1.11/24" in sh(f"{n}-h1", "ip -o -4 addr show dev eth0")
    sh(f"{n}-h1", "ping -c 1 -W 2 172.30.1.12")
    assert sh(f"{n}-h1", "cat /proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert "master br0" in sh(f"{n}-sw", "ip -o link show h1")
    # hosts of a segment know each other statically (the machine's neighbour table is
    # shared by all namespaces; permanent entries do not count against its limit)
    assert "lladdr 02:50:ac:1e:01:0c PERMANENT" in sh(f"{n}-h1", "ip neigh show 172.30.1.12")
    # agents: real processes running `podnet agent` inside their host namespace
    for h in blab.hosts:
        pid = blab.agent_pid(h.name)
        assert pid and alive(pid)
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{h.netns}").st_ino
        assert "agent" in open(f"/proc/{pid}/cmdline").read().split("\0")
    # pods: attached through the CNI path, an address each, pods on one host talk
    ips = {p.name: p.ip for p in blab.pods}
    assert len(set(ips.values())) == 4 and all(ip and ip.startswith("10.244.") for ip in
                                                ips.values())
    assert f"{ips['h1-p1']}/" in sh(f"{n}-h1-p1", "ip -o -4 addr show dev eth0")
    sh(f"{n}-h1-p1", f"ping -c 1 -W 2 {ips['h1-p2']}")
    # the root namespace has none of it
    assert "172.30." not in sh(None, "ip -o addr") + sh(None, "ip route")


def test_ls_json_shape(blab: Lab) -> None:
    out = json.loads(podnet("lab", "ls", blab.name, "--json").stdout)
    assert out["backend"] == "bridge" and out["store"] == "sqlite"
    hosts = out["hosts"]
    assert [h["name"] for h in hosts] == ["h1", "h2"]
    for h in hosts:
        assert set(h) == {"name", "netns", "ip", "pods"}
        assert h["netns"] == f"{blab.name}-{h['name']}"
        for p in h["pods"]:
            assert set(p) == {"name", "netns", "ip"}
            assert p["netns"] == f"{blab.name}-{p['name']}"
    assert hosts[1]["ip"] == "172.30.1.12"
    assert [p["name"] for p in hosts[0]["pods"]] == ["h1-p1", "h1-p2"]
    every = json.loads(podnet("lab", "ls", "--json").stdout)
    assert blab.name in [lab["name"] for lab in every["labs"]]


def test_exec_cli_and_api(blab: Lab) -> None:
    out = podnet("lab", "exec", blab.name, "h2", "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert "172.30.1.12/24" in out.stdout
    assert podnet("lab", "exec", blab.name, "h1-p1", "--", "sh", "-c", "exit 7",
                  check=False).returncode == 7
    assert "br0" in blab.exec("sw", "ip -o link show type bridge").stdout
    pod = blab.pod("h2-p1")
    res = blab.exec("h2-p2", ["ping", "-c", "1", "-W", "2", str(pod.ip)])
    assert res.returncode == 0, res.stderr
    with pytest.raises(PodnetError, match="has no host, pod or switch"):
        blab.exec("h9", "true")


def test_ping_matrix_without_overlay(blab: Lab) -> None:
    """Per-host bridges: pods on one host reach each other, nothing crosses hosts; the
    CLI's JSON has one entry per ordered pair and the exit status reports the failures."""
    results = {(r.src, r.dst): r for r in blab.ping_all(timeout=0.3, tries=1)}
    assert len(results) == 12
    assert results[("h1-p1", "h1-p2")].ok and results[("h2-p2", "h2-p1")].ok
    assert results[("h1-p1", "h1-p2")].rtt_ms is not None
    assert not results[("h1-p1", "h2-p1")].ok and results[("h1-p1", "h2-p1")].rtt_ms is None
    assert blab.ping("h2-p1", "h2-p2").ok
    proc = podnet("lab", "ping", blab.name, "--json", "--timeout", "0.3", "--tries", "1",
                  check=False)
    assert proc.returncode == 1
    pairs = json.loads(proc.stdout)["pairs"]
    assert len(pairs) == 12 and set(pairs[0]) == {"src", "dst", "ok", "rtt_ms"}
    assert sum(p["ok"] for p in pairs) == 4


def test_unknown_lab_one_line_error() -> None:
    missing = new_prefix()
    for args in (["ls", missing], ["ping", missing], ["exec", missing, "h1", "--", "true"]):
        proc = podnet("lab", *args, check=False)
        assert proc.returncode != 0
        assert proc.stderr.strip().count("\n") == 0 and f"no lab named '{missing}'" in \
            proc.stderr
    down = podnet("lab", "down", missing)  # nothing there: safe, says so
    assert "nothing to remove" in down.stdout


def test_up_refuses_an_existing_lab(blab: Lab) -> None:
    proc = podnet("lab", "up", "--name", blab.name, "--backend", "bridge", check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert blab.agent_pid("h1") is not None  # the existing lab was not touched


def test_agent_kill_restart_and_pods(blab: Lab) -> None:
    old = blab.agent_pid("h1")
    assert old is not None
    blab.kill_agent("h1", signal.SIGKILL)
    assert not alive(old) and blab.agent_pid("h1") is None
    new = blab.start_agent("h1")
    assert new != old and alive(new)
    pod = blab.add_pod("h1")
    assert pod.name == "h1-p3" and pod.ip
    sh(f"{blab.name}-h1-p1", f"ping -c 1 -W 2 {pod.ip}")
    blab.remove_pod(pod.name)
    assert f"{blab.name}-h1-p3" not in lab_namespaces(blab.name)


def test_add_and_remove_host(blab: Lab) -> None:
    h3 = blab.add_host(pods=1)
    assert (h3.name, h3.ip) == ("h3", "172.30.1.13")
    sh(f"{blab.name}-h1", "ping -c 1 -W 2 172.30.1.13")
    assert "PERMANENT" in sh(f"{blab.name}-h1", "ip neigh show 172.30.1.13")
    pid = blab.agent_pid("h3")
    assert pid is not None
    blab.remove_host("h3")
    assert not alive(pid)
    assert [n for n in lab_namespaces(blab.name) if "-h3" in n] == []
    assert sh(f"{blab.name}-h1", "ip neigh show 172.30.1.13").strip() == ""
    assert [h.name for h in blab.hosts] == ["h1", "h2"]


# -- teardown --------------------------------------------------------------------------
def test_python_api_teardown_leaves_nothing() -> None:
    name = new_prefix()
    with Lab(Topo(hosts=1, pods_per_host=1), backend="bridge", name=name) as lab:
        pids = [lab.agent_pid("h1") or 0]
        assert lab_namespaces(name) == [f"{name}-h1", f"{name}-h1-p1", f"{name}-sw"]
    assert_gone(name, pids)


def test_cli_down_after_crash_and_twice() -> None:
    """`lab up`, then the state file is lost (a crash): `lab down` still stops the
    lab's agents (found by their lab-specific socket path), deletes every namespace
    and directory; a second `lab down` finds nothing and succeeds."""
    name = new_prefix()
    try:
        podnet("lab", "up", "--name", name, "--hosts", "2", "--pods-per-host", "0",
               "--backend", "bridge")
        pids = [h["pid"] for h in json.loads(
            podnet("lab", "ls", name, "--json").stdout)["agents"].values()]
        assert all(alive(p) for p in pids)
        os.unlink(state.state_path(name))
        podnet("lab", "down", name)
        assert_gone(name, pids)
        assert "nothing to remove" in podnet("lab", "down", name).stdout
    finally:
        podnet("lab", "down", name, check=False)


def test_failed_up_tears_down() -> None:
    """An agent that cannot start (a lease TTL shorter than its renew margin is refused)
    fails `lab up` with the agent's message; nothing of the lab is left."""
    name = new_prefix()
    proc = podnet("lab", "up", "--name", name, "--hosts", "1", "--pods-per-host", "1",
                  "--backend", "bridge", "--lease-ttl", "5", "--renew-margin", "9",
                  check=False)
    assert proc.returncode != 0
    assert "agent on h1 exited during start-up" in proc.stderr
    assert_gone(name, [])


# -- two segments, etcd --------------------------------------------------------------
@needs_etcd
def test_two_segments_router_and_etcd() -> None:
    """Hosts alternate between two switches joined by the router namespace; a host on
    segment 2 reaches segment 1 through it (one hop) and reaches the lab's etcd."""
    name = new_prefix()
    with Lab(Topo(hosts=3, pods_per_host=0, segments=2), backend="bridge", store="etcd",
             name=name) as lab:
        assert [(h.name, h.ip) for h in lab.hosts] == [
            ("h1", "172.30.1.11"), ("h2", "172.30.2.12"), ("h3", "172.30.1.13")]
        assert lab.store_url == "etcd+https://172.30.1.254:2379"
        assert {f"{name}-{r}" for r in ("sw1", "sw2", "rt")} <= set(lab_namespaces(name))
        assert "via 172.30.2.1" in sh(f"{name}-h2", "ip route get 172.30.1.11")
        out = sh(f"{name}-h2", "ping -c 1 -W 2 172.30.1.11")
        assert "ttl=63" in out  # one router hop
        sh(f"{name}-h1", "ping -c 1 -W 2 172.30.1.13")  # same segment, direct
        assert sh(f"{name}-rt", "cat /proc/sys/net/ipv4/ip_forward").strip() == "1"
        tls = lab.store_settings  # over TLS with the lab's client certificate only
        health = (f"{sys.executable} -c \"import ssl, urllib.request as u; "
                  f"c = ssl.create_default_context(cafile='{tls['cacert']}'); "
                  f"c.load_cert_chain('{tls['cert']}', '{tls['key']}'); "
                  f"print(u.urlopen('https://172.30.1.254:2379/health', timeout=2, "
                  f"context=c).read())\"")
        assert "true" in sh(f"{name}-h2", health)
        plain = (f"{sys.executable} -c \"import urllib.request as u; "
                 f"u.urlopen('http://172.30.1.254:2379/health', timeout=2)\"")
        assert "RemoteDisconnected" in sh(f"{name}-h2", plain + " 2>&1 || true")
        etcd = lab.etcd
        assert etcd is not None and etcd.pid is not None
        pids = [etcd.pid, *(lab.agent_pid(h.name) or 0 for h in lab.hosts)]
        assert all(alive(p) for p in pids)
        etcd.stop()
        assert not alive(pids[0]) and not etcd.healthy()
        etcd.start()
        assert etcd.healthy() and json.loads(open(state.state_path(name)).read())[
            "etcd"]["pid"] == etcd.pid
        pids.append(etcd.pid)
        ls = json.loads(podnet("lab", "ls", name, "--json").stdout)
        assert ls["router"]["ips"] == ["172.30.1.1", "172.30.2.1"]
    assert_gone(name, pids)


# -- overlays (once their drivers exist) ----------------------------------------------
@pytest.mark.parametrize("backend,store,segments,options", [
    pytest.param("vxlan", "sqlite", 1, None, marks=needs_driver("vxlan"), id="vxlan"),
    pytest.param("host-gw", "sqlite", 1, None, marks=needs_driver("host-gw"), id="host-gw"),
    pytest.param("udp", "sqlite", 1, None, marks=needs_driver("udp"), id="udp"),
    pytest.param("vxlan", "etcd", 2, {"DirectRouting": True},
                 marks=[needs_driver("vxlan"), needs_etcd], id="vxlan-etcd-2seg-direct"),
])
def test_all_pairs_ping(backend: str, store: str, segments: int, options: dict | None
                        ) -> None:
    name = new_prefix()
    hosts = 3 if segments == 1 else 4
    with Lab(Topo(hosts=hosts, pods_per_host=2, segments=segments), backend=backend,
             store=store, name=name, backend_options=options) as lab:
        subnets = [h.subnet for h in lab.hosts]
        assert len(set(subnets)) == hosts and all(s and s.startswith("10.244.") for s in subnets)
        results = lab.ping_all()
        assert len(results) == (2 * hosts) * (2 * hosts - 1)
        assert [r for r in results if not r.ok] == []
        assert all(r.rtt_ms is not None and r.rtt_ms >= 0 for r in results)
        out = podnet("lab", "ping", name, "--json")
        pairs = json.loads(out.stdout)["pairs"]
        assert len(pairs) == len(results) and all(p["ok"] for p in pairs)
        assert set(pairs[0]) == {"src", "dst", "ok", "rtt_ms"}
        pids = [lab.agent_pid(h.name) or 0 for h in lab.hosts] + lab_processes(name)
        if backend == "udp":  # agents twice (state + cmdline), a forwarder per host at least
            assert len(pids) >= 3 * hosts
    assert_gone(name, pids)
    assert lab_processes(name) == []  # udp forwarders (they outlive agents) are gone too


def lab_processes(name: str) -> list[int]:
    """PIDs whose command line names one of the lab's directories (agents, forwarders)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().decode(errors="replace")
        except OSError:
            continue
        if entry.isdigit() and f"/labs/{name}/" in args and alive(int(entry)):
            found.append(int(entry))
    return found


@needs_driver("host-gw")
def test_host_gw_refuses_peers_off_link() -> None:
    """host-gw across two segments: `lab up` prints the agent's refusal, exits non-zero
    and leaves nothing behind."""
    name = new_prefix()
    proc = podnet("lab", "up", "--name", name, "--hosts", "2", "--pods-per-host", "0",
                  "--backend", "host-gw", "--segments", "2", check=False)
    assert proc.returncode != 0
    assert "not on-link" in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert_gone(name, [])
