"""Services end to end in a lab: `podnet service` / `podnet pod label` write the store,
every agent programs nftables, and pods on three hosts serve a virtual IP.

Independent witnesses: the replies themselves (each endpoint answers with its name),
`nft list` in the hosts, and connection timing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from podnet_fixtures import new_prefix, sh

from podnet.lab import Lab, Topo

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(128); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""
CLIENT = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    t = time.monotonic()
    try:
        c = socket.create_connection((host, port), timeout=2)
        data = c.recv(64).decode() or "EMPTY"
        c.close()
    except ConnectionRefusedError:
        data = "REFUSED"
    except OSError as exc:
        data = type(exc).__name__
    print(data, round((time.monotonic() - t) * 1000, 2))
"""
ENDPOINTS = ("h1-p1", "h2-p1", "h3-p1")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(Topo(hosts=3, pods_per_host=2), backend="vxlan", name=new_prefix(),
             lease_ttl=10, renew_margin=3, resync_period=2) as lab:
        servers = []
        try:
            for pod in ENDPOINTS:
                proc = subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{lab.netns_of(pod)}", sys.executable, "-c",
                     SERVER, pod], stdout=subprocess.PIPE, text=True)
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
                servers.append(proc)
            for pod in ENDPOINTS:
                podnet(lab, "pod", "label", pod, "app=web")
            yield lab
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()


def podnet(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "podnet", "--lab", lab.name, *args],
                          capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"podnet {args}: {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def connect(lab: Lab, src: str, ip: str, port: int, n: int) -> list[tuple[str, float]]:
    res = lab.exec(src, [sys.executable, "-c", CLIENT, ip, str(port), str(n)], timeout=120)
    assert res.returncode == 0, res.stderr
    return [(line.split()[0], float(line.split()[1])) for line in res.stdout.splitlines()]


def programmed(lab: Lab, vip: str, *, hosts=("h1", "h2", "h3")) -> bool:
    return all(vip in sh(lab.netns_of(h), "nft list table ip podnet-svc 2>/dev/null",
                         check=False) for h in hosts)


def wait_until(predicate, timeout: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def ruleset(lab: Lab, host: str) -> str:
    """The host's nft ruleset without the affinity timers that count down by themselves."""
    return re.sub(r" expires [0-9hms.]+", "", sh(lab.netns_of(host), "nft list ruleset"))


def create(lab: Lab, *args: str) -> dict:
    return json.loads(podnet(lab, "service", "create", *args, "--json").stdout)


def test_clusterip_spreads_over_endpoints_and_follows_labels(lab: Lab) -> None:
    svc = create(lab, "web", "--port", "80:8080/tcp", "--selector", "app=web")
    vip = svc["cluster_ip"]
    assert vip.startswith("10.96.")
    assert wait_until(lambda: programmed(lab, vip))
    replies = connect(lab, "h1-p2", vip, 80, 300)
    counts = Counter(name for name, _ in replies)
    assert set(counts) == set(ENDPOINTS), counts
    assert all(counts[e] >= 45 for e in ENDPOINTS), counts  # >= 15% of 300 each
    listed = json.loads(podnet(lab, "service", "ls", "--json").stdout)
    assert len(listed[0]["endpoints"]) == 3
    # an endpoint leaves (its label removed): no new connection reaches it
    podnet(lab, "pod", "label", "h3-p1", "app=")
    inspect = json.loads(podnet(lab, "service", "inspect", "web").stdout)
    assert len(inspect["endpoints"]) == 2
    assert wait_until(lambda: sh(lab.netns_of("h1"), "nft list table ip podnet-svc")
                      .count("dnat to") == 2)
    counts = Counter(name for name, _ in connect(lab, "h2-p2", vip, 80, 100))
    assert "h3-p1" not in counts and set(counts) == {"h1-p1", "h2-p1"}, counts
    podnet(lab, "pod", "label", "h3-p1", "app=web")


def test_node_port_from_another_host_and_affinity(lab: Lab) -> None:
    svc = create(lab, "webnp", "--type", "NodePort", "--port", "81:8080", "--selector",
                 "app=web", "--affinity", "client-ip")
    node_port = svc["ports"][0]["node_port"]
    assert 30000 <= node_port <= 32767
    assert wait_until(lambda: programmed(lab, svc["cluster_ip"]))
    h1_ip = lab.host("h1").ip
    replies = connect(lab, "h2", h1_ip, node_port, 30)  # from another lab host
    names = {name for name, _ in replies}
    assert len(names) == 1 and names <= set(ENDPOINTS), replies  # affinity: one endpoint


def test_service_without_endpoints_refuses_fast(lab: Lab) -> None:
    svc = create(lab, "empty", "--port", "82:8080", "--selector", "app=nothing")
    assert wait_until(lambda: programmed(lab, svc["cluster_ip"]))
    replies = connect(lab, "h1-p2", svc["cluster_ip"], 82, 5)
    assert all(name == "REFUSED" and ms < 100 for name, ms in replies), replies


@pytest.mark.parametrize("args, message", [
    (["bad1", "--port", "70000"], "out of range"),
    (["bad2", "--port", "80/sctp"], "protocol"),
    (["web", "--port", "80"], "in use"),
    (["Bad_Name", "--port", "80"], "name"),
    (["bad3", "--port", "80", "--cluster-ip", "10.1.2.3"], "10.1.2.3"),
])
def test_bad_input_changes_nothing(lab: Lab, args, message) -> None:
    if "web" in args and not json.loads(podnet(lab, "service", "ls", "--json").stdout):
        create(lab, "web", "--port", "80:8080/tcp", "--selector", "app=web")
    time.sleep(0.5)
    before = [ruleset(lab, h) for h in ("h1", "h2")]
    listed = podnet(lab, "service", "ls", "--json").stdout
    out = podnet(lab, "service", "create", *args, check=False)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    time.sleep(0.5)
    assert [ruleset(lab, h) for h in ("h1", "h2")] == before
    assert podnet(lab, "service", "ls", "--json").stdout == listed


def test_service_cidr_exhausted(lab: Lab) -> None:
    podnet(lab, "service", "config", "--cidr", "10.97.0.0/30")
    try:
        create(lab, "a1", "--port", "90", "--selector", "app=web")
        create(lab, "a2", "--port", "90", "--selector", "app=web")
        out = podnet(lab, "service", "create", "a3", "--port", "90", check=False)
        assert out.returncode != 0 and "exhausted" in out.stderr
    finally:
        for name in ("a1", "a2"):
            podnet(lab, "service", "rm", name, check=False)
        podnet(lab, "service", "config", "--cidr", "10.96.0.0/16")


def test_agent_restart_changes_nothing_in_nft(lab: Lab) -> None:
    if not json.loads(podnet(lab, "service", "ls", "--json").stdout):
        create(lab, "web", "--port", "80:8080/tcp", "--selector", "app=web")
    time.sleep(1)
    before = sh(lab.netns_of("h2"), "nft list table ip podnet-svc")
    lab.kill_agent("h2")
    lab.start_agent("h2")
    time.sleep(1.5)
    assert sh(lab.netns_of("h2"), "nft list table ip podnet-svc") == before
