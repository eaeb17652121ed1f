"""Multi-host overlays in the lab: each backend on each store.

Kernel claims (routes withdrawn, entries restored, state identical) are checked with
`ip route`, `ip neigh` and `bridge fdb` inside the lab's host namespaces, never with
podnet's own records. Timing knobs are set so leases expire in seconds.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from podnet_fixtures import new_prefix, sh

from podnet.errors import PodnetError
from podnet.lab import Lab, Topo

TTL, MARGIN, RESYNC = 4.0, 1.5, 1.0
COMBOS = [("vxlan", "sqlite"), ("host-gw", "sqlite"), ("udp", "sqlite"),
          ("vxlan", "etcd"), ("host-gw", "etcd"), ("udp", "etcd")]
OVERHEAD = {"vxlan": 50, "udp": 28, "host-gw": 0}


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{b}-{s}" for b, s in COMBOS])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    backend, store = request.param
    with Lab(Topo(hosts=3, pods_per_host=2), backend=backend, store=store, name=new_prefix(),
             lease_ttl=TTL, renew_margin=MARGIN, resync_period=RESYNC) as lab:
        yield lab


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def host_state(lab: Lab, host: str) -> str:
    """Everything the agent programs on a host, as the kernel reports it."""
    ns = lab.netns_of(host)
    parts = [
        sh(ns, "ip -o link show | sed -E 's/^[0-9]+: //; s/ state [A-Z]+//' "
               "| awk '{print $1, $2, $3, $4, $5}'"),
        sh(ns, "ip -o addr show | awk '{print $2, $3, $4}'"),
        sh(ns, "ip route show table main"),
        sh(ns, "ip neigh show nud permanent"),
        sh(ns, "for d in $(ip -o link show type vxlan | awk -F': ' '{print $2}'); do "
               "bridge fdb show dev $d; done"),
    ]
    return "\n".join(parts)


SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5299)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while chunk := c.recv(1 << 16):
    h.update(chunk); n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""
CLIENT = """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2])); c = socket.create_connection((sys.argv[1], 5299), 5)
c.sendall(data); c.close(); print(len(data), hashlib.sha256(data).hexdigest())
"""


def tcp_transfer(lab: Lab, src: str, dst: str, nbytes: int = 4 << 20) -> None:
    """A real TCP transfer pod to pod: every byte arrives, checksum verified."""
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.netns_of(dst)}", sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        sent = lab.exec(src, [sys.executable, "-c", CLIENT, str(lab.pod(dst).ip),
                              str(nbytes)])
        assert sent.returncode == 0, sent.stderr
        received = server.stdout.readline().strip()
        assert received == sent.stdout.strip() and received.startswith(f"{nbytes} ")
    finally:
        server.kill()
        server.wait()


def test_all_pairs_ping_and_tcp(lab: Lab) -> None:
    results = lab.ping_all()
    assert len(results) == 6 * 5
    assert [r for r in results if not r.ok] == []
    subnets = {h.subnet for h in lab.hosts}
    assert len(subnets) == 3
    tcp_transfer(lab, "h1-p1", "h2-p1")
    tcp_transfer(lab, "h3-p2", "h1-p2")


def test_pod_mtu_is_underlay_minus_encapsulation(lab: Lab) -> None:
    # (not /sys/class/net: nsenter keeps the root namespace's sysfs mounted)
    out = lab.exec("h1-p1", "ip -o link show dev eth0").stdout
    assert f" mtu {1500 - OVERHEAD[lab.backend]} " in out, out


def _peer_route(lab: Lab, host: str, peer: str) -> str:
    return _route_to(lab, host, str(lab.host(peer).subnet))


def _route_to(lab: Lab, host: str, subnet: str) -> str:
    """How `host` reaches a peer subnet: its route, or for udp the forwarder's entry
    (the udp backend routes the whole cluster CIDR into its TUN device)."""
    if lab.backend == "udp":
        from podnet.lab import state
        from podnet.udp import control

        ctl = f"{state.run_dir(lab.name)}/{host}-udp-{lab.state.network}.ctl"
        dest = control.get_peers(ctl).get(subnet)
        return f"{subnet} via {dest[0]}:{dest[1]}" if dest else ""
    return sh(lab.netns_of(host), f"ip route show {subnet}").strip()


def test_resync_restores_deleted_entries(lab: Lab) -> None:
    ns = lab.netns_of("h1")
    before = host_state(lab, "h1")
    if lab.backend == "udp":
        route = sh(ns, "ip route show 10.244.0.0/16").strip()
        assert route
        sh(ns, "ip route del 10.244.0.0/16")
        assert wait_until(lambda: sh(ns, "ip route show 10.244.0.0/16").strip() == route,
                          RESYNC + 2)
    else:
        route = _peer_route(lab, "h1", "h2")
        assert route
        sh(ns, f"ip route del {lab.host('h2').subnet}")
        if lab.backend == "vxlan":
            fdb = sh(ns, "bridge fdb show dev pnvx1").splitlines()
            victim = next(line for line in fdb if "dst 172.30." in line)
            mac, dst = victim.split()[0], victim.split()[2]
            sh(ns, f"bridge fdb del {mac} dev pnvx1 dst {dst} self")
            neigh = sh(ns, "ip neigh show dev pnvx1 nud permanent").splitlines()[0].split()[0]
            sh(ns, f"ip neigh del {neigh} dev pnvx1")
        assert wait_until(lambda: host_state(lab, "h1") == before, RESYNC + 2), \
            host_state(lab, "h1")
    assert lab.ping("h1-p1", "h2-p1").ok


def _ping_stream(lab: Lab, src: str, dst: str, count: int, out: dict) -> None:
    res = lab.exec(src, ["ping", "-i", "0.01", "-c", str(count), "-W", "1", "-q",
                         str(lab.pod(dst).ip)], timeout=60)
    out[(src, dst)] = res.stdout


def test_agent_sigkill_restart_loses_nothing(lab: Lab) -> None:
    before = host_state(lab, "h1")
    streams: dict = {}
    threads = [threading.Thread(target=_ping_stream, args=(lab, s, d, 400, streams))
               for s, d in (("h2-p1", "h3-p1"), ("h2-p2", "h1-p1"), ("h1-p2", "h3-p2"))]
    for t in threads:
        t.start()
    time.sleep(0.5)
    lab.kill_agent("h1", signal.SIGKILL)
    time.sleep(0.3)
    lab.start_agent("h1")
    for t in threads:
        t.join()
    for pair, out in streams.items():
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m and m.group(1) == m.group(2) == "400", (pair, out)
    time.sleep(RESYNC + 0.5)  # one full resync of the new agent has run
    assert host_state(lab, "h1") == before


def test_host_removed_peers_withdraw_within_ttl(lab: Lab) -> None:
    new = lab.add_host(pods=1)
    assert wait_until(lambda: _peer_route(lab, "h1", new.name) != "", 5)
    assert lab.ping("h1-p1", f"{new.name}-p1").ok
    subnet = lab.host(new.name).subnet
    vtep_macs = sh(lab.netns_of(new.name),
                   "ip -o link show dev pnvx1 2>/dev/null | grep -o 'link/ether [0-9a-f:]*' "
                   "| cut -d' ' -f2 || true").strip()
    t0 = time.monotonic()
    lab.remove_host(new.name, graceful=False)  # agent SIGKILLed, namespace gone

    def withdrawn() -> bool:
        for h in ("h1", "h2", "h3"):
            ns = lab.netns_of(h)
            if _route_to(lab, h, str(subnet)):
                return False
            if vtep_macs and vtep_macs in sh(ns, "bridge fdb show dev pnvx1"):
                return False
        return True

    assert wait_until(withdrawn, TTL + 2), "peers kept the removed host's routes"
    elapsed = time.monotonic() - t0
    assert elapsed <= TTL + 2
    assert lab.ping_all(pairs=[("h1-p1", "h2-p1"), ("h3-p1", "h2-p2")])[0].ok


@pytest.mark.parametrize("lab", [("vxlan", "etcd")], indirect=True, ids=["vxlan-etcd"])
def test_etcd_outage(lab: Lab) -> None:
    """etcd stopped 20 s: pods keep talking; an ADD meanwhile fails with code 11 and
    succeeds once etcd is back."""
    assert lab.etcd is not None
    lab.etcd.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(PodnetError) as err:
            lab.add_pod("h1")
        assert err.value.code == 11, err.value
        assert time.monotonic() - t0 < 10
        while time.monotonic() - t0 < 20:
            results = lab.ping_all(pairs=[("h1-p1", "h2-p1"), ("h2-p2", "h3-p1")])
            assert all(r.ok for r in results), results
            time.sleep(2)
    finally:
        lab.etcd.start()
    pod = None
    for _ in range(40):  # the retry a runtime would make
        try:
            pod = lab.add_pod("h1")
            break
        except PodnetError as exc:
            assert exc.code == 11, exc
            time.sleep(0.25)
    assert pod is not None
    assert lab.ping(pod.name, "h3-p1").ok


# -- configuration errors: a clear message at start, nothing half-built -------------------
def _podnet(*args: str, netns: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "podnet", *args]
    if netns:
        cmd = ["nsenter", f"--net=/run/netns/{netns}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (["--driver", "vxlan", "--subnet", "10.244.0.0/16", "--subnet-len", "31"], "SubnetLen"),
    (["--driver", "vxlan", "--subnet", "10.244.0.0/16", "--subnet-len", "8"], "SubnetLen"),
    (["--driver", "vxlan", "--subnet", "10.244.0.0/16", "--backend", '{"Type": "gre"}'],
     "unknown backend"),
    (["--driver", "vxlan", "--subnet", "10.244.0.0/16", "--backend", '{"VNI": 0}'], "VNI"),
    (["--driver", "udp", "--subnet", "10.250.0.0/16"], "overlaps"),
])
def test_bad_overlay_config(tmp_path, args, message) -> None:
    store = str(tmp_path / "db")
    assert _podnet("--store", store, "network", "create", "other",
                   "--subnet", "10.250.3.0/24").returncode == 0
    proc = _podnet("--store", store, "network", "create", "ov", *args)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    listed = json.loads(_podnet("--store", store, "network", "ls", "--json").stdout)
    assert [n["name"] for n in listed] == ["other"]


def test_agent_with_unreachable_etcd_fails_clearly(host_ns: str, tmp_path) -> None:
    sock = str(tmp_path / "a.sock")
    t0 = time.monotonic()
    proc = _podnet("--store", "etcd://127.0.0.1:9", "--socket", sock, "agent",
                   "--node-name", "x", netns=host_ns)
    assert proc.returncode != 0 and time.monotonic() - t0 < 15
    assert "store unavailable" in proc.stderr and "127.0.0.1:9" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert sh(host_ns, "ip -o link show").count("\n") == 1  # lo only
    assert not (tmp_path / "a.sock").exists()


def test_racing_agents_never_share_a_subnet(tmp_path, etcd_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from podnet.backends.overlay.config import from_network
    from podnet.model import Network
    from podnet.resources import open_resources

    net = Network(name=f"race{new_prefix()}", driver="vxlan", subnet="10.245.0.0/24",
                  subnet_len=28)
    cfg = from_network(net)
    for url in (str(tmp_path / "db"), etcd_url):
        def take(i: int, url: str = url) -> str:
            with open_resources(url) as res:
                return res.leases.acquire(cfg.network, cfg.subnets(), f"n{i}",
                                          f"172.30.9.{i + 1}", 1450, {}, 30).subnet

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(take, range(16)))
        assert len(set(got)) == 16, (url, got)
        with open_resources(url) as res, pytest.raises(PodnetError) as err:
            res.leases.acquire(cfg.network, cfg.subnets(), "n99", "172.30.9.99", None, {}, 30)
        assert err.value.code == 100
        # a restarted node gets its own subnet back
        with open_resources(url) as res:
            again = res.leases.acquire(cfg.network, cfg.subnets(), "n3", "172.30.9.4", None,
                                       {}, 30)
            assert again.subnet == got[3]


@pytest.mark.parametrize("lab", [("vxlan", "sqlite"), ("vxlan", "etcd")], indirect=True,
                         ids=["vxlan-sqlite", "vxlan-etcd"])
def test_other_commands_act_on_the_lab_with_lab_flag(lab: Lab) -> None:
    pods = json.loads(_podnet("--lab", lab.name, "pod", "ls", "--json").stdout)
    assert {p["pod"].split("/")[1] for p in pods} >= {"h1-p1", "h2-p1", "h3-p2"}
    nets = json.loads(_podnet("--lab", lab.name, "network", "ls", "--json").stdout)
    assert [n["driver"] for n in nets] == ["vxlan"]
