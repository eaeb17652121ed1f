"""An installation of the first release (store schema 1) upgrades in place.

The old release is taken from this repository's history (the last commit before the
resource layer) and run for real: it creates networks and attaches pods in a test host
namespace, leases a host subnet of an overlay. Then today's code opens the same store:
every record is migrated, the running pods keep their addresses, a new pod gets a
free one, and a migrated pod detaches cleanly (veth gone, address free).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest
from podnet_fixtures import REPO, Namespaces, links, nsenter, sh

V1_RELEASE = "66b835a"  # install.sh: leave an existing policy-rc.d alone (schema 1)


def _old_tree(tmp_path) -> str:  # type: ignore[no-untyped-def]
    have = subprocess.run(["git", "-C", REPO, "cat-file", "-e", f"{V1_RELEASE}^{{commit}}"],
                          capture_output=True)
    if have.returncode != 0:
        pytest.skip(f"release {V1_RELEASE} is not in this clone's history (shallow clone?)")
    archive = tmp_path / "v1.tar"
    subprocess.run(["git", "-C", REPO, "archive", "-o", str(archive), V1_RELEASE, "src"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "v1", filter="data")
    return str(tmp_path / "v1" / "src")


def _run(src: str, host: str, store: str, *args: str, code: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": src}
    argv = [sys.executable, "-c", code] if code else \
        [sys.executable, "-m", "podnet", "--store", store, "--socket", store + ".sock", *args]
    proc = subprocess.run([*nsenter(host), *argv], env=env, capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


V1_LEASE = """
import sys
from podnet.model import Network
from podnet.overlay import leases
from podnet.overlay.config import from_network
from podnet.store import open_store
store = open_store(sys.argv[1])
cfg = from_network(Network(name="ovl", driver="vxlan", subnet="10.246.0.0/16", subnet_len=24))
leases.acquire(store, cfg, "test", "172.30.0.9",
               {"type": "vxlan", "vtep_mac": "02:aa:bb:cc:dd:ee", "vni": 1, "port": 8472,
                "pod_mtu": 1450}, 600)
"""


def test_schema_1_store_upgrades_in_place(tmp_path, ns: Namespaces) -> None:
    src = _old_tree(tmp_path)
    host = ns.add("host")
    store = str(tmp_path / "podnet.db")
    _run(src, host, store, "network", "create", "web", "--subnet", "10.97.0.0/24")
    _run(src, host, store, "network", "create", "ovl", "--driver", "vxlan",
         "--subnet", "10.246.0.0/16", "--subnet-len", "24")
    pods = [ns.add(f"p{i}") for i in (1, 2)]
    for i, pod in enumerate(pods, start=1):
        _run(src, host, store, "pod", "add", f"old{i}", "--network", "web", "--netns",
             f"/run/netns/{pod}", "--label", f"app=v1-{i}")
    old = {p["pod"]: p for p in json.loads(_run(src, host, store, "pod", "ls", "--json"))}
    subprocess.run([*nsenter(host), sys.executable, "-c", V1_LEASE, store], check=True,
                   env={**os.environ, "PYTHONPATH": src}, cwd="/")

    from podnet import keys
    from podnet.resources import open_resources
    from podnet.resources.migrate import CURRENT, version
    from podnet.store import open_store

    with open_store(store) as raw:
        assert version(raw) == 1 and raw.list(keys.V1_ENDPOINTS)
    with open_resources(store) as res:
        with open_store(store) as raw:
            assert version(raw) == CURRENT
            assert raw.list(keys.V1_ENDPOINTS) == []
        ports = {p.pod: p for p in res.list_ports()}
        assert set(ports) == {"old1", "old2"}
        for name, p in ports.items():
            assert p.address == old[name]["address"]
            assert p.labels == old[name]["labels"] and p.frontend == "cni"
            assert p.sandbox == old[name]["netns"] and p.id
            assert p.fixed_ips[0].subnet_id == res.get_subnet("10.97.0.0/24").id
        web = res.get_network("web")
        assert web.id and res.list_subnets("web")[0].gateway_ip == "10.97.0.1"
        assert res.get_subnet("10.246.0.0/16").role == "cluster"
        lease = res.leases.remembered("ovl", "test")
        assert lease is not None and lease.pod_mtu == 1450
        assert lease.backend["vtep_mac"] == "02:aa:bb:cc:dd:ee"
        assert "pod_mtu" not in lease.backend
        (live,) = res.leases.list("ovl")
        assert live.pod_mtu == 1450 and live.subnet == lease.subnet

    # today's code keeps using the upgraded store: a new pod, then an old one removed
    new_pod = ns.add("p3")
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src")}
    proc = subprocess.run(
        [*nsenter(host), sys.executable, "-m", "podnet", "--store", store, "--socket",
         store + ".sock", "pod", "add", "new1", "--network", "web", "--netns",
         f"/run/netns/{new_pod}", "--json"], env=env, capture_output=True, text=True,
        cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    new_ip = json.loads(proc.stdout)["ips"][0]["address"]
    assert new_ip not in {p["address"] for p in old.values()}
    proc = subprocess.run(
        [*nsenter(host), sys.executable, "-m", "podnet", "--store", store, "--socket",
         store + ".sock", "pod", "rm", "old1"], env=env, capture_output=True, text=True,
        cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "eth0" not in links(pods[0])
    with open_resources(store) as res:
        owners = res.address_owners("web")
        assert old["old1"]["address"].split("/")[0] not in owners
        assert old["old2"]["address"].split("/")[0] in owners
    sh(pods[1], f"ping -c 1 -W 2 {new_ip.split('/')[0]}")
