"""The `podnet` command as a user runs it (inside a test host namespace)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from podnet_fixtures import Namespaces, kernel_state, links, nsenter, sh


def podnet(host: str, store: str, *args: str, sock: str = "/nonexistent/agent.sock",
           check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*nsenter(host), sys.executable, "-m", "podnet", "--store", store, "--socket", sock,
         *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"podnet {args}: {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def pod_namespaces() -> list[str]:
    return sorted(n for n in sh(None, "ip netns list").split() if n.startswith("pn-pod-"))


def test_help_everywhere() -> None:
    from podnet.cli import build_parser

    parser = build_parser()
    commands = [[], ["agent"], ["network"], ["network", "create"], ["network", "ls"],
                ["network", "inspect"], ["network", "rm"], ["pod"], ["pod", "add"],
                ["pod", "rm"], ["pod", "ls"], ["cleanup"], ["install-cni"], ["demo"]]
    for cmd in commands:
        out = subprocess.run([sys.executable, "-m", "podnet", *cmd, "--help"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "usage: podnet" in out.stdout, (cmd, out.stderr)
    assert parser.prog == "podnet"


def test_network_and_pod_lifecycle(host_ns: str, store_path: str, ns: Namespaces) -> None:
    out = podnet(host_ns, store_path, "network", "create", "web", "--subnet", "10.93.0.0/24",
                 "--json")
    assert json.loads(out.stdout)["gateway"] == "10.93.0.1"
    carved = json.loads(podnet(host_ns, store_path, "network", "create", "auto",
                               "--json").stdout)
    assert carved["subnet"].startswith("10.200.") and carved["subnet"].endswith("/24")
    nets = json.loads(podnet(host_ns, store_path, "network", "ls", "--json").stdout)
    assert {n["name"] for n in nets} == {"web", "auto"}

    own = ns.add("mine")
    podnet(host_ns, store_path, "pod", "add", "p1", "--network", "web")
    podnet(host_ns, store_path, "pod", "add", "p2", "--network", "web", "--netns",
           f"/run/netns/{own}", "--label", "app=db")
    pods = json.loads(podnet(host_ns, store_path, "pod", "ls", "--json").stdout)
    by_name = {p["pod"]: p for p in pods}
    assert set(by_name) == {"p1", "p2"}
    assert by_name["p2"]["labels"] == {"app": "db"}
    ip2 = by_name["p2"]["address"].split("/")[0]
    sh("pn-pod-p1", f"ping -c 1 -W 2 {ip2}")
    table = podnet(host_ns, store_path, "pod", "ls").stdout
    assert "p1" in table and "10.93.0." in table

    info = json.loads(podnet(host_ns, store_path, "network", "inspect", "web").stdout)
    assert len(info["ports"]) == 2 and len(info["allocations"]) == 2
    assert len(info["subnets"]) == 1 and info["subnets"][0]["cidr"] == "10.93.0.0/24"

    busy = podnet(host_ns, store_path, "network", "rm", "web", check=False)
    assert busy.returncode != 0 and "attached" in busy.stderr

    podnet(host_ns, store_path, "pod", "rm", "p1")
    assert "pn-pod-p1" not in sh(None, "ip netns list")
    podnet(host_ns, store_path, "pod", "rm", "p2")
    assert "eth0" not in links(own)
    podnet(host_ns, store_path, "network", "rm", "web")
    assert "pnbr-web" not in links(host_ns)


def test_pod_add_through_agent(host_ns, store_path, agent, ns: Namespaces) -> None:
    podnet(host_ns, store_path, "network", "create", "web", "--subnet", "10.94.0.0/24")
    p = ns.add("p")
    out = podnet(host_ns, store_path, "pod", "add", "a", "--network", "web", "--netns",
                 f"/run/netns/{p}", "--json", sock=agent.socket)
    assert json.loads(out.stdout)["ips"][0]["address"] == "10.94.0.2/24"


@pytest.mark.parametrize("args, message", [
    (["network", "create", "bad", "--subnet", "10.95.0.1/24"], "host bits"),
    (["network", "create", "bad", "--subnet", "10.95.0.0/24", "--driver", "wat"],
     "unknown driver"),
    (["network", "create", "bad name", "--subnet", "10.95.0.0/24"], "invalid network name"),
    (["network", "create", "bad", "--subnet", "10.95.0.0/24", "--gateway", "10.96.0.1"],
     "gateway"),
    (["network", "create", "ov", "--driver", "vxlan", "--subnet", "10.240.0.0/16",
      "--subnet-len", "12"], "SubnetLen"),
    (["network", "rm", "nope"], "does not exist"),
    (["pod", "add", "x", "--network", "nope"], "does not exist"),
    (["pod", "add", "x", "--network", "web", "--netns", "/run/netns/pnt-none"],
     "does not exist"),
    (["pod", "rm", "ghost"], "not attached"),
])
def test_bad_input_one_line_error_and_no_change(host_ns, store_path, args, message) -> None:
    podnet(host_ns, store_path, "network", "create", "web", "--subnet", "10.97.0.0/24")
    before = kernel_state(host_ns), pod_namespaces(), \
        podnet(host_ns, store_path, "network", "ls", "--json").stdout
    out = podnet(host_ns, store_path, *args, check=False)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("podnet: error:") and message in lines[0], \
        out.stderr
    after = kernel_state(host_ns), pod_namespaces(), \
        podnet(host_ns, store_path, "network", "ls", "--json").stdout
    assert after == before


def test_overlapping_subnets_refused(host_ns: str, store_path: str) -> None:
    podnet(host_ns, store_path, "network", "create", "a", "--subnet", "10.98.0.0/16")
    out = podnet(host_ns, store_path, "network", "create", "b", "--subnet", "10.98.5.0/24",
                 check=False)
    assert out.returncode != 0 and "overlaps" in out.stderr


def test_cleanup_removes_leftovers(host_ns: str, store_path: str, ns: Namespaces) -> None:
    podnet(host_ns, store_path, "network", "create", "web", "--subnet", "10.99.0.0/24",
           "--ip-masq")
    podnet(host_ns, store_path, "pod", "add", "c1", "--network", "web")
    podnet(host_ns, store_path, "pod", "add", "c2", "--network", "web")
    assert "podnet" in sh(host_ns, "nft list tables")
    report = json.loads(podnet(host_ns, store_path, "cleanup", "--json").stdout)
    assert set(report["namespaces"]) == {"pn-pod-c1", "pn-pod-c2"}
    assert "pnbr-web" in report["links"]
    assert links(host_ns) == {"lo"}
    assert "podnet" not in sh(host_ns, "nft list tables")
    assert "pn-pod-" not in sh(None, "ip netns list")
    assert json.loads(podnet(host_ns, store_path, "pod", "ls", "--json").stdout) == []
