"""A real dockerd 20.10 (podnet.lab.dockerd) and podnet's plugin server under it.

Each test starts its own dockerd(s) inside test host namespaces, each with a private mount
namespace whose /run/docker/plugins is a directory of the test. The plugin server runs
with `RefBackend` below: a minimal but real remote driver (a bridge per network in the
host namespace, a veth per endpoint) and IPAM, answering with the fewest valid fields and
with errors on request, so what Docker sends and how it reacts is observed on the wire.
After every test the world is checked with ip / mountinfo / ls / /proc, not only with
the launcher's own records.

PODNET_RECORD_PAYLOADS=PATH re-records tests/data/docker_payloads.json (the bodies this
dockerd sends, used by the contract tests in test_docker_plugin.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from podnet_fixtures import Namespaces, links, new_prefix

from podnet.api.docker import handlers
from podnet.api.docker.plugin import PluginServer, Router
from podnet.api.docker.protocol import GENERIC, validate
from podnet.errors import INVALID_CONFIG, NOT_FOUND, POOL_EXHAUSTED, PodnetError
from podnet.lab import procs
from podnet.lab.dockerd import Dockerd

pytestmark = [pytest.mark.runtime, pytest.mark.slow]

PAYLOADS = Path(__file__).parent / "data" / "docker_payloads.json"
IMAGE = "podnet-busybox:latest"

if shutil.which("dockerd") is None or not os.path.exists("/bin/busybox"):
    pytest.skip("needs docker.io (dockerd 20.10) and busybox-static", allow_module_level=True)


# ---- a minimal real remote driver + IPAM ---------------------------------------------


class RefBackend:
    """Bridge + veth in the host namespace; pools handed out from the requested CIDR.

    `-o fail=TEXT` (network) and `--ipam-opt fail=TEXT` (IPAM) make it fail on purpose
    with TEXT. Names stay under the test prefix (pntXXXX + 7 chars <= 15).
    """

    def __init__(self, host_ns: str, prefix: str, default_pool: str) -> None:
        self.host = host_ns
        self.prefix = prefix
        self.default_pool = default_pool
        self.lock = threading.Lock()
        self.networks: dict[str, dict[str, str]] = {}
        self.endpoints: dict[str, str] = {}
        self.pools: dict[str, tuple[ipaddress.IPv4Network, set[str]]] = {}

    def _ip(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["ip", "-n", self.host, *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise PodnetError(INVALID_CONFIG, f"ip {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    # NetworkDriver
    def create_network(self, req: Any) -> dict[str, Any]:
        generic = (req.get("Options") or {}).get(GENERIC) or {}
        if "fail" in generic:
            raise PodnetError(INVALID_CONFIG, generic["fail"])
        v4 = (req.get("IPv4Data") or [{}])[0]
        with self.lock:
            br = f"{self.prefix}b{len(self.networks)}"
            self.networks[req["NetworkID"]] = {"bridge": br, "gateway": v4.get("Gateway", "")}
        self._ip("link", "add", br, "type", "bridge")
        if v4.get("Gateway"):
            self._ip("addr", "add", v4["Gateway"], "dev", br)
        self._ip("link", "set", br, "up")
        return {}

    def delete_network(self, req: Any) -> dict[str, Any]:
        net = self.networks.pop(req["NetworkID"], None)
        if net is None:
            raise PodnetError(NOT_FOUND, f"network {req['NetworkID'][:12]} does not exist")
        self._ip("link", "del", net["bridge"], check=False)
        return {}

    def create_endpoint(self, req: Any) -> dict[str, Any]:
        net = self.networks.get(req["NetworkID"])
        if net is None:
            raise PodnetError(NOT_FOUND, f"network {req['NetworkID'][:12]} does not exist")
        eid = req["EndpointID"]
        host, peer = f"{self.prefix}h{eid[:6]}", f"{self.prefix}c{eid[:6]}"
        self._ip("link", "add", host, "type", "veth", "peer", "name", peer)
        self._ip("link", "set", host, "master", net["bridge"], "up")
        self.endpoints[eid] = peer
        mac = (req.get("Interface") or {}).get("MacAddress")
        if mac:
            self._ip("link", "set", peer, "address", mac)  # apply Docker's; never echo it
            return {}
        own = json.loads(self._ip("-j", "link", "show", peer))[0]["address"]
        return {"Interface": {"MacAddress": own}}

    def endpoint_oper_info(self, req: Any) -> dict[str, Any]:
        return {"Value": {}}

    def delete_endpoint(self, req: Any) -> dict[str, Any]:
        self.endpoints.pop(req["EndpointID"], None)
        self._ip("link", "del", f"{self.prefix}h{req['EndpointID'][:6]}", check=False)
        return {}

    def join(self, req: Any) -> dict[str, Any]:
        net = self.networks[req["NetworkID"]]
        answer: dict[str, Any] = {
            "InterfaceName": {"SrcName": self.endpoints[req["EndpointID"]], "DstPrefix": "eth"},
            "DisableGatewayService": True}
        if net["gateway"]:
            answer["Gateway"] = net["gateway"].split("/")[0]
        return answer

    def leave(self, req: Any) -> dict[str, Any]:
        return {}

    def allocate_network(self, req: Any) -> dict[str, Any]:
        return {}

    def free_network(self, req: Any) -> dict[str, Any]:
        return {}

    def discover_new(self, req: Any) -> dict[str, Any]:
        return {}

    def discover_delete(self, req: Any) -> dict[str, Any]:
        return {}

    def program_external_connectivity(self, req: Any) -> dict[str, Any]:
        return {}

    def revoke_external_connectivity(self, req: Any) -> dict[str, Any]:
        return {}

    # IpamDriver
    def request_pool(self, req: Any) -> dict[str, Any]:
        opts = req.get("Options") or {}
        if "fail" in opts:
            raise PodnetError(INVALID_CONFIG, opts["fail"])
        pool = req.get("Pool") or self.default_pool
        pool_id = f"{req['AddressSpace']}/{pool}/{req.get('SubPool', '')}"
        with self.lock:
            self.pools.setdefault(pool_id, (ipaddress.IPv4Network(pool), set()))
        return {"PoolID": pool_id, "Pool": pool, "Data": {}}

    def release_pool(self, req: Any) -> dict[str, Any]:
        self.pools.pop(req["PoolID"], None)
        return {}

    def request_address(self, req: Any) -> dict[str, Any]:
        net, used = self.pools[req["PoolID"]]
        with self.lock:
            if req.get("Address"):
                addr = req["Address"]
                if ipaddress.ip_address(addr) not in net or addr in used:
                    raise PodnetError(INVALID_CONFIG, f"address {addr} is taken or not in {net}")
            else:
                free = (str(h) for h in net.hosts() if str(h) not in used)
                addr = next(free, "")
                if not addr:
                    raise PodnetError(POOL_EXHAUSTED, f"pool {net} has no free address")
            used.add(addr)
        return {"Address": f"{addr}/{net.prefixlen}", "Data": {}}

    def release_address(self, req: Any) -> dict[str, Any]:
        self.pools.get(req["PoolID"], (None, set()))[1].discard(req["Address"])
        return {}


class Calls:
    """Every plugin call as observed by the router: (method, request, status, answer)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, dict[str, Any], int, dict[str, Any]]] = []

    def __call__(self, method: str, req: dict[str, Any], status: int,
                 answer: dict[str, Any]) -> None:
        with self.lock:
            self.items.append((method, json.loads(json.dumps(req)), status, answer))

    def methods(self, skip: tuple[str, ...] = ("EndpointOperInfo",)) -> list[str]:
        with self.lock:
            return [m[1:] for m, *_ in self.items if not m.endswith(skip)]

    def take(self) -> list[tuple[str, dict[str, Any], int, dict[str, Any]]]:
        with self.lock:
            out, self.items = self.items, []
            return out


# ---- the world of one test -----------------------------------------------------------


class World:
    """Host namespaces, dockerds and plugin servers of one test, all removed at the end."""

    def __init__(self) -> None:
        self.prefix = new_prefix()
        self.ns = Namespaces(self.prefix)
        self.daemons: list[Dockerd] = []
        self.servers: list[PluginServer] = []
        self.root_links = links_root()

    def dockerd(self, role: str) -> Dockerd:
        host = self.ns.add(role)
        root = tempfile.mkdtemp(prefix=f"{self.prefix}-{role}-", dir="/tmp")
        d = Dockerd(host, root)
        self.daemons.append(d)
        d.start()
        d.import_busybox(IMAGE)
        return d

    def plugin(self, d: Dockerd, name: str, backend: Any,
               drop: tuple[str, ...] = ()) -> Calls:
        calls = Calls()
        table = {m: h for m, h in handlers.routes(backend).items() if m not in drop}
        server = PluginServer(os.path.join(d.plugin_dir, f"{name}.sock"),
                              Router(table, validate=validate, observer=calls))
        self.servers.append(server.serve_in_thread())
        return calls

    def close(self) -> list[str]:
        problems = []
        for d in self.daemons:
            problems += [f"{d.name}: {x}" for x in d.teardown()]
        for server in self.servers:
            server.close()
        self.ns.remove_all()
        problems += independent_leftovers(self.prefix, [d.root for d in self.daemons])
        new_links = {n for n in links_root() - self.root_links
                     if n.startswith(("veth", "br-", "docker", self.prefix))}
        problems += [f"root namespace link {n}" for n in sorted(new_links)]
        return problems


def links_root() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def independent_leftovers(prefix: str, roots: list[str]) -> list[str]:
    """What `ip netns`, mountinfo, ls, /proc and the cgroup tree still show of the test."""
    out = []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out += [f"netns {n.split()[0]}" for n in names.splitlines() if n.startswith(prefix)]
    mountinfo = Path("/proc/self/mountinfo").read_text()
    for root in roots:
        if os.path.exists(root):
            out.append(f"directory {root}")
        out += [f"mount {line.split()[4]}" for line in mountinfo.splitlines() if root in line]
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if root in cmd and int(pid) != os.getpid():
                out.append(f"process {pid} {cmd[:80]}")
    cg = subprocess.run(f"ls -d /sys/fs/cgroup/*/podnet-{prefix}* /sys/fs/cgroup/podnet-{prefix}*",
                        shell=True, capture_output=True, text=True).stdout
    out += [f"cgroup {c}" for c in cg.split()]
    return out


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    failed = True
    try:
        yield w
        failed = False
    finally:
        problems = w.close()
        if not failed:
            assert problems == [], problems


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def container_ip(d: Dockerd, name: str, network: str) -> str:
    fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return d.docker("inspect", "-f", fmt, name).stdout.strip()


def tcp_transfer(d: Dockerd, src: str, dst: str, dst_addr: str, size_kb: int = 1024) -> None:
    """src sends size_kb of random data to dst over TCP (busybox nc); checksums match."""
    d.docker("exec", "-d", dst, "sh", "-c", "sleep 60 | nc -l -p 5000 > /tmp/got")
    wait_for(lambda: ":5000 " in d.docker("exec", dst, "netstat", "-ltn").stdout,
             f"{dst} listening on 5000")
    sent = d.docker("exec", src, "sh", "-c",
                    f"dd if=/dev/urandom of=/tmp/sent bs=1024 count={size_kb} 2>/dev/null"
                    f" && nc {dst_addr} 5000 < /tmp/sent && md5sum < /tmp/sent").stdout.split()[0]

    def received() -> bool:
        out = d.docker("exec", dst, "sh", "-c", "md5sum < /tmp/got").stdout.split()
        return bool(out) and out[0] == sent

    wait_for(received, f"{size_kb} KB at {dst}")


# ---- the daemon itself ---------------------------------------------------------------


def test_bridge_network_ping_tcp_and_where_namespaces_live(world: World) -> None:
    """Docker's own bridge driver works with --bridge=none; containers' namespaces hang
    off the host namespace, nothing appears in the root namespace."""
    d = world.dockerd("h1")
    net = f"{world.prefix}-br"
    d.docker("network", "create", "-d", "bridge", "--subnet", "10.213.0.0/24", net)
    for c in ("a", "b"):
        d.docker("run", "-d", "--name", f"{world.prefix}-{c}", "--network", net, IMAGE,
                 "sleep", "600")
    a, b = f"{world.prefix}-a", f"{world.prefix}-b"
    out = d.docker("exec", a, "ping", "-c", "2", "-W", "2", b).stdout
    assert "2 packets received" in out, out  # by name: Docker's embedded DNS
    tcp_transfer(d, a, b, container_ip(d, b, net))

    bridge = "br-" + d.docker("network", "inspect", "-f", "{{.Id}}", net).stdout[:12]
    host_links = links(d.netns)
    assert bridge in host_links and sum(n.startswith("veth") for n in host_links) == 2
    assert bridge not in links_root()

    key = d.docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", a).stdout.strip()
    assert key.startswith(os.path.join(d.exec_root, "netns") + "/")
    # Outside dockerd's mount namespace the sandbox key is a plain empty file...
    assert os.path.isfile(key) and os.path.getsize(key) == 0
    assert not any(f" {key} " in line for line in Path("/proc/self/mountinfo").open())
    # ...inside it, the container's network namespace is mounted there.
    inside = Path(f"/proc/{d.pid}/mountinfo").read_text()
    assert any(f" {key} " in line and " - nsfs " in line for line in inside.splitlines())
    pid = d.docker("inspect", "-f", "{{.State.Pid}}", a).stdout.strip()
    ns_ids = {os.stat(p).st_ino for p in (f"/proc/{pid}/ns/net", f"/run/netns/{d.netns}",
                                          "/proc/self/ns/net")}
    assert len(ns_ids) == 3
    # The daemon keeps no copies of other namespaces' mounts (they would pin them).
    assert sum(" - nsfs " in line for line in inside.splitlines()) == 2  # a's and b's


def test_restart_brings_back_containers_on_both_drivers(world: World) -> None:
    d = world.dockerd("h1")
    backend = RefBackend(d.netns, world.prefix, "10.214.1.0/24")
    calls = world.plugin(d, "pnref", backend)
    d.docker("network", "create", "-d", "bridge", "--subnet", "10.214.0.0/24", "brnet")
    d.docker("network", "create", "-d", "pnref", "--ipam-driver", "pnref", "pnnet")
    for name, net in (("c1", "brnet"), ("c2", "pnnet")):
        d.docker("run", "-d", "--restart", "always", "--name", name, "--network", net, IMAGE,
                 "sleep", "600")
    before = {c: container_ip(d, c, n) for c, n in (("c1", "brnet"), ("c2", "pnnet"))}
    calls.take()
    old_pid = d.pid
    d.restart()
    assert d.pid != old_pid
    for c in ("c1", "c2"):
        wait_for(lambda c=c: d.docker("inspect", "-f", "{{.State.Running}}", c).stdout.strip()
                 == "true", f"{c} running again")
    after = {c: container_ip(d, c, n) for c, n in (("c1", "brnet"), ("c2", "pnnet"))}
    assert after == before
    seen = calls.methods()
    # Shutdown detaches the endpoint; the restarted daemon activates the plugin again and
    # attaches the container anew.
    activate = seen.index("Plugin.Activate")
    assert {"NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"} <= set(seen[:activate])
    after_start = seen[activate:]
    assert after_start.index("NetworkDriver.Join") > after_start.index(
        "NetworkDriver.CreateEndpoint"), seen
    # The address was released at shutdown, and the restarted daemon asks for any address
    # (not the old one, and with no container or endpoint ID an IPAM could key on): c2
    # kept its address above only because RefBackend hands out the lowest free one.
    again = [r for m, r, _s, _a in calls.take() if m == "/IpamDriver.RequestAddress"]
    assert [(r["Address"], r["Options"]) for r in again] == [("", None)]
    peer = backend.endpoints[next(iter(backend.endpoints))]
    assert peer not in links(d.netns)  # moved into the container


# ---- the plugin server under dockerd -------------------------------------------------


def test_plugin_calls_order_errors_and_dns(world: World) -> None:
    d = world.dockerd("h1")
    backend = RefBackend(d.netns, world.prefix, "10.215.9.0/24")
    calls = world.plugin(d, "pnref", backend)

    d.docker("network", "create", "-d", "pnref", "--subnet", "10.215.1.0/24", "n1")
    # Activation registers both drivers at once, even with Docker's default IPAM.
    assert calls.methods() == ["Plugin.Activate", "NetworkDriver.GetCapabilities",
                               "IpamDriver.GetCapabilities",
                               "IpamDriver.GetDefaultAddressSpaces",
                               "NetworkDriver.CreateNetwork"]
    assert all(status == 200 for _m, _r, status, _a in calls.take())

    # An Err answer reaches the user verbatim ("remote: TEXT"), and nothing is created.
    text = "podnet refuses this network: the reason is given in one sentence"
    res = d.docker("network", "create", "-d", "pnref", "-o", f"fail={text}", "n2", check=False)
    assert res.returncode != 0 and f"remote: {text}" in res.stderr, res.stderr
    text = "podnet's IPAM has no pool for these options"
    res = d.docker("network", "create", "-d", "pnref", "--ipam-driver", "pnref",
                   "--ipam-opt", f"fail={text}", "n3", check=False)
    assert res.returncode != 0 and f"remote: {text}" in res.stderr, res.stderr
    names = d.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "n2" not in names and "n3" not in names

    # Containers on the remote network: connectivity and Docker's embedded DNS.
    for c in ("c1", "c2"):
        d.docker("run", "-d", "--name", c, "--network", "n1", "--network-alias", f"{c}-alias",
                 IMAGE, "sleep", "600")
    c2 = container_ip(d, "c2", "n1")
    assert "nameserver 127.0.0.11" in d.docker("exec", "c1", "cat", "/etc/resolv.conf").stdout
    for name in ("c2", "c2-alias", "c2.n1"):
        out = d.docker("exec", "c1", "nslookup", name, "127.0.0.11").stdout
        assert f"Address: {c2}" in out, out
    assert "2 packets received" in d.docker("exec", "c1", "ping", "-c", "2", "c2").stdout
    tcp_transfer(d, "c1", "c2", c2, size_kb=512)
    # The MAC the driver chose (Docker supplied none) is the container's.
    mac = d.docker("inspect", "-f", '{{(index .NetworkSettings.Networks "n1").MacAddress}}',
                   "c1").stdout.strip()
    assert mac and mac in d.docker("exec", "c1", "ip", "link", "show", "eth0").stdout


def test_unknown_methods_answer_404_and_docker_skips_them(world: World) -> None:
    """Without Program/RevokeExternalConnectivity and IPAM GetCapabilities, dockerd gets
    404s and carries on (published ports then are the driver's business alone)."""
    d = world.dockerd("h1")
    backend = RefBackend(d.netns, world.prefix, "10.216.1.0/24")
    dropped = ("/NetworkDriver.ProgramExternalConnectivity",
               "/NetworkDriver.RevokeExternalConnectivity", "/IpamDriver.GetCapabilities")
    calls = world.plugin(d, "pnref", backend, drop=dropped)
    d.docker("network", "create", "-d", "pnref", "--ipam-driver", "pnref", "n1")
    d.docker("run", "-d", "--name", "c1", "--network", "n1", "-p", "8080:80", IMAGE,
             "sleep", "600")
    d.docker("rm", "-f", "c1")
    statuses = {m: s for m, _r, s, _a in calls.take()}
    assert {m: statuses[m] for m in dropped} == dict.fromkeys(dropped, 404)
    assert statuses["/NetworkDriver.Join"] == 200


def test_two_dockerds_each_see_only_their_own_plugin(world: World) -> None:
    d1, d2 = world.dockerd("h1"), world.dockerd("h2")
    world.plugin(d1, "pnone", RefBackend(d1.netns, world.prefix + "x", "10.217.1.0/24"))
    world.plugin(d2, "pntwo", RefBackend(d2.netns, world.prefix + "y", "10.217.2.0/24"))
    d1.docker("network", "create", "-d", "pnone", "n1")
    d2.docker("network", "create", "-d", "pntwo", "n2")
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def wrong(d: Dockerd, plugin: str) -> None:  # dockerd retries a missing plugin ~15 s
        results[plugin] = d.docker("network", "create", "-d", plugin, "nx", check=False)

    threads = [threading.Thread(target=wrong, args=a) for a in ((d1, "pntwo"), (d2, "pnone"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for plugin, res in results.items():
        assert res.returncode != 0 and "not found" in res.stderr, (plugin, res.stderr)
    assert not os.path.exists("/run/docker/plugins/pnone.sock")
    assert not os.path.exists("/run/docker/plugins/pntwo.sock")


# ---- what dockerd 20.10 sends --------------------------------------------------------


def shape(value: Any) -> Any:
    """The JSON structure of a value: keys and value types, not the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_record_what_dockerd_sends(world: World) -> None:
    """Each step's calls (method order and body structure) equal the stored recording."""
    d = world.dockerd("h1")
    backend = RefBackend(d.netns, world.prefix, "10.218.9.0/24")
    calls = world.plugin(d, "podnet", backend)
    steps: list[tuple[str, list[str]]] = [
        ("network create -d podnet --ipam-driver podnet --subnet --gateway --ip-range "
         "--aux-address -o ... --ipam-opt ...",
         ["network", "create", "-d", "podnet", "--ipam-driver", "podnet",
          "--subnet", "10.218.5.0/24", "--gateway", "10.218.5.1",
          "--ip-range", "10.218.5.128/25", "--aux-address", "reserved=10.218.5.10",
          "-o", "podnet.driver=bridge", "-o", "podnet.mtu=1400",
          "--ipam-opt", "podnet.network=labnet", "--label", "owner=test", "n1"]),
        ("network create -d podnet --internal --subnet (Docker's default IPAM)",
         ["network", "create", "-d", "podnet", "--internal", "--subnet", "10.218.6.0/24",
          "n2"]),
        ("run --ip --mac-address -p HOST:CONTAINER -p IP:HOST:CONTAINER/udp",
         ["run", "-d", "--name", "c1", "--network", "n1", "--ip", "10.218.5.140",
          "--mac-address", "02:42:0a:da:05:8c", "-p", "8080:80", "-p", "127.0.0.1:8443:443/udp",
          IMAGE, "sleep", "600"]),
        ("run (address and MAC chosen by the drivers)",
         ["run", "-d", "--name", "c2", "--network", "n1", IMAGE, "sleep", "600"]),
        ("network connect (second network, Docker's IPAM)", ["network", "connect", "n2", "c1"]),
        ("network disconnect", ["network", "disconnect", "n2", "c1"]),
        ("rm -f (published ports)", ["rm", "-f", "c1"]),
        ("rm -f", ["rm", "-f", "c2"]),
        ("network rm (podnet IPAM)", ["network", "rm", "n1"]),
        ("network rm (Docker's IPAM)", ["network", "rm", "n2"]),
    ]
    recorded = []
    for title, args in steps:
        d.docker(*args)
        taken = calls.take()
        assert all(status == 200 for _m, _r, status, _a in taken), taken
        kept, seen_info = [], False
        for m, r, _s, a in taken:  # EndpointOperInfo repeats as often as Docker inspects
            if m.endswith("EndpointOperInfo"):
                if seen_info:
                    continue
                seen_info = True
            kept.append({"method": m, "request": r, "answer": a})
        recorded.append({"step": title, "docker": " ".join(args), "calls": kept})
    check_semantics(recorded)
    if os.environ.get("PODNET_RECORD_PAYLOADS"):
        doc = {"dockerd": d.docker("version", "-f", "{{.Server.Version}}").stdout.strip(),
               "steps": recorded}
        Path(os.environ["PODNET_RECORD_PAYLOADS"]).write_text(json.dumps(doc, indent=1) + "\n")
    stored = json.loads(PAYLOADS.read_text())["steps"]
    assert [s["step"] for s in stored] == [s["step"] for s in recorded]
    def sequence(step: dict[str, Any]) -> list[tuple[str, Any]]:
        # EndpointOperInfo interleaves with the other calls as Docker happens to inspect
        return [(c["method"], shape(c["request"])) for c in step["calls"]
                if not c["method"].endswith("EndpointOperInfo")]

    for old, new in zip(stored, recorded, strict=True):
        assert sequence(new) == sequence(old), new["step"]


def check_semantics(steps: list[dict[str, Any]]) -> None:
    """The facts protocol.py's docstring states, on the live recording."""
    create = steps[0]["calls"]
    methods = [c["method"] for c in create]
    assert methods[:4] == ["/Plugin.Activate", "/NetworkDriver.GetCapabilities",
                           "/IpamDriver.GetCapabilities", "/IpamDriver.GetDefaultAddressSpaces"]
    pool = next(c["request"] for c in create if c["method"] == "/IpamDriver.RequestPool")
    assert pool["SubPool"] == "10.218.5.128/25" and pool["Options"] == {
        "podnet.network": "labnet"}
    gw, aux = (c["request"] for c in create if c["method"] == "/IpamDriver.RequestAddress")
    assert gw["Address"] == "10.218.5.1" and gw["Options"] == {
        "RequestAddressType": "com.docker.network.gateway"}
    assert aux["Address"] == "10.218.5.10" and aux["Options"] is None
    net = next(c["request"] for c in create if c["method"] == "/NetworkDriver.CreateNetwork")
    assert net["Options"][GENERIC] == {"podnet.driver": "bridge", "podnet.mtu": "1400"}
    assert "com.docker.network.internal" not in net["Options"]
    assert net["IPv4Data"][0]["Gateway"] == "10.218.5.1/24"
    assert net["IPv4Data"][0]["AuxAddresses"] == {"reserved": "10.218.5.10/24"}
    assert "owner" not in json.dumps(net)  # labels are not sent
    internal = steps[1]["calls"][0]["request"]
    assert internal["Options"]["com.docker.network.internal"] is True
    run = {c["method"]: c["request"] for c in steps[2]["calls"]}
    ep = run["/NetworkDriver.CreateEndpoint"]
    assert ep["Interface"] == {"Address": "10.218.5.140/24", "AddressIPv6": "",
                               "MacAddress": "02:42:0a:da:05:8c"}
    assert run["/IpamDriver.RequestAddress"]["Address"] == "10.218.5.140"
    portmap = ep["Options"]["com.docker.network.portmap"]
    assert {(p["Proto"], p["HostIP"], p["HostPort"], p["Port"]) for p in portmap} == {
        (6, "", 8080, 80), (17, "127.0.0.1", 8443, 443)}
    assert "/NetworkDriver.ProgramExternalConnectivity" in run
    assert run["/NetworkDriver.Join"]["SandboxKey"]
    plain = {c["method"]: c for c in steps[3]["calls"]}
    assert plain["/NetworkDriver.CreateEndpoint"]["request"]["Interface"]["MacAddress"] == ""
    assert plain["/NetworkDriver.CreateEndpoint"]["answer"]["Interface"]["MacAddress"]


def test_teardown_after_a_crash_leaves_nothing(world: World) -> None:
    """dockerd killed with SIGKILL leaves containerd, shims and containers running:
    teardown finds them (mount namespace, exec root, cgroup) and removes everything."""
    d = world.dockerd("h1")
    d.docker("network", "create", "-d", "bridge", "--subnet", "10.219.0.0/24", "brnet")
    d.docker("run", "-d", "--name", "c1", "--network", "brnet", IMAGE, "sleep", "600")
    pid = d.docker("inspect", "-f", "{{.State.Pid}}", "c1").stdout.strip()
    assert d.pid is not None
    os.kill(d.pid, 9)
    wait_for(lambda: not d.running(), "dockerd gone")
    assert procs.alive(int(pid))  # the container outlived its daemon
    assert d.leftovers(files=False), "a crash should leave something to sweep"
    assert d.teardown() == []
    assert not procs.alive(int(pid))  # (a zombie waiting for PID 1 counts as gone)
