"""Services datapath against real namespaces: a host namespace holds the ruleset, three
endpoint pods and a client pod sit behind its bridge, an external namespace reaches it over
a veth. Kernel claims are checked with `nft list` and `conntrack` as witnesses."""

from __future__ import annotations

import collections
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from podnet_fixtures import Namespaces, new_prefix, sh

from podnet.errors import IN_USE, INVALID_CONFIG, POOL_EXHAUSTED, PodnetError
from podnet.kernel import netns as kns
from podnet.services.alloc import ServiceAllocator
from podnet.services.model import Service, ServicePort
from podnet.services.nft import chain_name
from podnet.services.proxy import ServiceProxy
from podnet.store.sqlite import SqliteStore

HOST_IP = "10.244.0.1"
EXT_GW = "10.250.0.1"
EXT_IP = "10.250.0.2"
CLIENT_IP = "10.244.0.20"
EPS = {"ep1": "10.244.0.11", "ep2": "10.244.0.12", "ep3": "10.244.0.13"}
PORT = 8080


# -- topology -------------------------------------------------------------------------------------
class Server:
    """TCP and UDP listeners on :8080 in one pod that answer '<identity> <peer address>'."""

    def __init__(self, netns: str, identity: str) -> None:
        self.identity = identity
        self.stop = threading.Event()
        self.tcp = kns.socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("0.0.0.0", PORT))
        self.tcp.listen(512)
        self.tcp.settimeout(0.1)
        self.udp = kns.socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", PORT))
        self.udp.settimeout(0.1)
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._tcp, self._udp)]
        for t in self.threads:
            t.start()

    def _tcp(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                try:
                    conn.sendall(f"{self.identity} {peer[0]}\n".encode())
                except OSError:
                    pass

    def _udp(self) -> None:
        while not self.stop.is_set():
            try:
                _, peer = self.udp.recvfrom(100)
                self.udp.sendto(f"{self.identity} {peer[0]}\n".encode(), peer)
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        self.tcp.close()
        self.udp.close()


@dataclass
class Lab:
    ns: Namespaces
    host: str
    cli: str
    ext: str
    pods: dict[str, str]
    servers: list[Server] = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"/run/netns/{name}"

    def nft(self, args: str, check: bool = True) -> str:
        return sh(self.host, f"nft {args}", check=check)

    def ruleset(self) -> str:
        return self.nft("list ruleset")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    ns = Namespaces(new_prefix())
    servers: list[Server] = []
    try:
        host, cli, ext = ns.add("host"), ns.add("cli"), ns.add("ext")
        sh(host, "ip link add br0 type bridge && ip addr add 10.244.0.1/24 dev br0"
                 " && ip link set br0 up && sysctl -qw net.ipv4.ip_forward=1")
        pods = {role: ns.add(role) for role in EPS}
        for role, addr in [*((r, a) for r, a in EPS.items()), ("cli", CLIENT_IP)]:
            pod = pods.get(role, cli)
            # hairpin on, as podnet's bridge driver does: with br_netfilter loaded, a DNATed
            # packet for a pod on the same bridge is bridged back out of its ingress port
            sh(host, f"ip link add v{role} type veth peer name eth0 netns {pod}"
                     f" && ip link set v{role} master br0 up"
                     f" && bridge link set dev v{role} hairpin on")
            sh(pod, f"ip addr add {addr}/24 dev eth0 && ip link set eth0 up"
                    f" && ip route add default via {HOST_IP}")
        sh(host, f"ip link add vext type veth peer name eth0 netns {ext}"
                 f" && ip addr add {EXT_GW}/24 dev vext && ip link set vext up")
        sh(ext, f"ip addr add {EXT_IP}/24 dev eth0 && ip link set eth0 up"
                f" && ip route add default via {EXT_GW}")
        servers += [Server(f"/run/netns/{pod}", role) for role, pod in pods.items()]
        yield Lab(ns, host, cli, ext, pods, servers)
    finally:
        for s in servers:
            s.close()
        ns.remove_all()


@pytest.fixture(params=["lib", "cli"])
def proxy(lab: Lab, request: pytest.FixtureRequest) -> Iterator[ServiceProxy]:
    px = ServiceProxy(lab.path(lab.host), backend=request.param)
    try:
        yield px
    finally:
        px.close()
        lab.nft("delete table ip podnet-svc", check=False)
        sh(lab.host, "conntrack -F", check=False)


# -- clients --------------------------------------------------------------------------------------
def in_ns(lab: Lab, name: str, fn: Callable[[], object]) -> object:
    return kns.run_in(lab.path(name), fn)


def ask(lab: Lab, client: str, addr: str, port: int, n: int = 1) -> list[tuple[str, str]]:
    """n TCP connections from `client`; each answer is (endpoint identity, peer it saw)."""

    def run() -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            with socket.create_connection((addr, port), timeout=3) as s:
                ident, peer = s.makefile().readline().split()
                out.append((ident, peer))
        return out

    return in_ns(lab, client, run)  # type: ignore[return-value]


def ask_udp(lab: Lab, client: str, addr: str, port: int) -> str:
    def run() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.connect((addr, port))
            s.send(b"hi")
            return s.recv(100).decode().split()[0]

    return in_ns(lab, client, run)  # type: ignore[return-value]


def svc(name: str, vip: str | None, port: int = 80, **kw: object) -> Service:
    sp = {k: kw.pop(k) for k in ("protocol", "node_port", "name") if k in kw}
    return Service(name, (ServicePort(port, target_port=PORT, **sp),), cluster_ip=vip, **kw)


def blocks(table: str) -> list[str]:
    """The sets, maps and chains of an `nft list table` text, in a canonical order."""
    body = table.strip().split("\n", 1)[1].rsplit("\n", 1)[0]  # inside "table ... { }"
    return sorted(body.split("\n\n"))


def conntrack_reply_sources(lab: Lab, vip: str) -> collections.Counter[str]:
    out = sh(lab.host, f"conntrack -L -p tcp --orig-dst {vip} 2>/dev/null")
    return collections.Counter(re.findall(r"src=(\S+)", line)[1] for line in out.splitlines())


# -- tests: model and allocation (no kernel) -------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"name": "web", "ports": [{"port": 70000}]}, "port 70000 out of range 1-65535"),
        ({"name": "web", "ports": [{"port": 0}]}, "port 0 out of range"),
        ({"name": "web", "ports": [{"port": 80, "protocol": "sctp"}]}, "unknown protocol 'sctp'"),
        ({"name": "Web_1", "ports": [{"port": 80}]}, "service name 'Web_1' is not valid"),
        ({"name": "web", "ports": []}, "at least one port"),
        ({"name": "web", "ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]},
         "duplicate port 80/tcp"),
        ({"name": "web", "ports": [{"port": 80, "node_port": 30000}]}, "type is ClusterIP"),
        ({"name": "web", "ports": [{"port": 80}], "cluster_ip": "10.96.0.300"},
         "is not an IP address"),
        ({"name": "web", "ports": [{"port": 80}], "affinity_timeout": 0}, "affinity timeout"),
    ],
)
def test_model_rejects_bad_input_clearly(data: dict, words: str) -> None:
    with pytest.raises(PodnetError) as err:
        Service.from_dict(data)
    assert err.value.code == INVALID_CONFIG
    assert words in str(err.value) and "web" in str(err.value).lower()


def test_model_round_trip() -> None:
    s = Service("dns", (ServicePort(53, "UDP", name="dns"), ServicePort(53, name="dns-tcp")),
                cluster_ip="10.96.0.10", type="nodeport", session_affinity="clientip",
                selector={"app": "dns"})
    assert s.type == "NodePort" and s.session_affinity == "ClientIP" and s.affinity
    assert s.ports[0].protocol == "udp" and s.ports[0].target == 53
    assert Service.from_dict(s.to_dict()) == s


def test_alloc_concurrent_allocators_never_collide(tmp_path) -> None:
    path = str(tmp_path / "store.db")
    made: list[Service] = []
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        alloc = ServiceAllocator(SqliteStore(path), cidr="10.96.0.0/26",
                                 node_port_range=(30000, 30061))
        for i in range(31):
            try:
                made.append(alloc.create(Service(f"s{tag}{i}", (ServicePort(80),),
                                                 type="NodePort")))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ips = [s.cluster_ip for s in made]
    nps = [s.ports[0].node_port for s in made]
    assert len(made) == 62 and len(set(ips)) == 62 and len(set(nps)) == 62
    alloc = ServiceAllocator(SqliteStore(path), cidr="10.96.0.0/26")
    with pytest.raises(PodnetError) as err:  # 62 usable addresses in a /26, all taken
        alloc.create(Service("one-more", (ServicePort(80),)))
    assert err.value.code == POOL_EXHAUSTED and "10.96.0.0/26 exhausted" in str(err.value)
    assert alloc.get("one-more") is None
    freed = alloc.get("sa0")
    assert freed and alloc.delete("sa0") and not alloc.delete("sa0")
    # the one freed address is the one handed out next
    assert alloc.create(Service("one-more", (ServicePort(80),))).cluster_ip == freed.cluster_ip
    assert {e.key for e in SqliteStore(path).list("/podnet/services/ips/")} == {
        f"/podnet/services/ips/{s.cluster_ip}" for s in alloc.list()}


def test_alloc_requested_values_and_errors(tmp_path) -> None:
    alloc = ServiceAllocator(SqliteStore(str(tmp_path / "s.db")))
    web = alloc.create(svc("web", "10.96.0.10", type="NodePort", node_port=30080))
    assert web.cluster_ip == "10.96.0.10" and web.ports[0].node_port == 30080
    cases = [
        (svc("web", "10.96.0.11"), IN_USE, "service name already in use"),
        (svc("api", "10.96.0.10"), IN_USE, "cluster IP 10.96.0.10 already in use"),
        (svc("api", "10.97.0.1"), INVALID_CONFIG, "outside the service CIDR"),
        (svc("api", None, type="NodePort", node_port=30080), IN_USE, "node port 30080"),
        (svc("api", None, type="NodePort", node_port=80), INVALID_CONFIG, "node port range"),
    ]
    for bad, code, words in cases:
        with pytest.raises(PodnetError) as err:
            alloc.create(bad)
        assert err.value.code == code and words in str(err.value), str(err.value)
    # failures left nothing behind: only web's three keys exist
    keys = {e.key for e in alloc.store.list("/podnet/services/")}
    assert keys == {"/podnet/services/specs/web", "/podnet/services/ips/10.96.0.10",
                    "/podnet/services/nodeports/30080"}


# -- tests: datapath ---------------------------------------------------------------------------
def test_load_spreads_over_endpoints(lab: Lab, proxy: ServiceProxy) -> None:
    proxy.sync_all([svc("web", "10.96.0.10")], {"web": list(EPS.values())})
    answers = ask(lab, lab.cli, "10.96.0.10", 80, n=300)
    counts = collections.Counter(ident for ident, _ in answers)
    assert set(counts) == set(EPS) and min(counts.values()) >= 45, counts  # >= 15% each
    assert {peer for _, peer in answers} == {CLIENT_IP}  # ClusterIP from a pod: no masquerade
    witness = conntrack_reply_sources(lab, "10.96.0.10")
    assert sum(witness.values()) >= 300 and set(witness) == set(EPS.values())
    assert min(witness.values()) >= 0.15 * sum(witness.values()), witness
    chain = lab.nft(f"list chain ip podnet-svc {chain_name('web', ServicePort(80))}")
    assert "numgen random mod 3 0" in chain and "map" not in chain  # a cascade, no anon maps


def test_udp_service(lab: Lab, proxy: ServiceProxy) -> None:
    proxy.update(svc("dns", "10.96.0.53", 53, protocol="udp"), [EPS["ep2"]])
    assert ask_udp(lab, lab.cli, "10.96.0.53", 53) == "ep2"


def test_endpoint_removed_gets_no_new_connections(lab: Lab, proxy: ServiceProxy) -> None:
    other = svc("other", "10.96.0.11")
    proxy.sync_all([svc("web", "10.96.0.10"), other],
                   {"web": list(EPS.values()), "other": [EPS["ep1"]]})
    before = lab.nft("-a list chain ip podnet-svc " + chain_name("other", ServicePort(80)))
    elems_before = lab.nft("-a list map ip podnet-svc svc-ips")
    proxy.update(svc("web", "10.96.0.10"), [EPS["ep1"], EPS["ep2"]])
    counts = collections.Counter(i for i, _ in ask(lab, lab.cli, "10.96.0.10", 80, n=100))
    assert "ep3" not in counts and set(counts) == {"ep1", "ep2"}, counts
    chain = lab.nft("list chain ip podnet-svc " + chain_name("web", ServicePort(80)))
    assert EPS["ep3"] not in chain and EPS["ep1"] in chain
    # incremental: the other service's chain (rule handles) and the dispatch map were untouched
    assert lab.nft("-a list chain ip podnet-svc " + chain_name("other", ServicePort(80))) == before
    assert lab.nft("-a list map ip podnet-svc svc-ips") == elems_before
    assert ask(lab, lab.cli, "10.96.0.11", 80) == [("ep1", CLIENT_IP)]


def test_nodeport_from_outside_is_masqueraded(lab: Lab, proxy: ServiceProxy) -> None:
    proxy.update(svc("np", "10.96.0.20", type="NodePort", node_port=30080),
                 [EPS["ep2"], EPS["ep3"]])
    answers = ask(lab, lab.ext, EXT_GW, 30080, n=20)
    assert {i for i, _ in answers} <= {"ep2", "ep3"} and len(answers) == 20
    assert {peer for _, peer in answers} == {HOST_IP}  # masqueraded to the host's bridge address
    out = sh(lab.host, "conntrack -L -p tcp --orig-port-dst 30080 2>/dev/null")
    assert out.count(f"dst={HOST_IP}") >= 20  # reply tuple goes back to the masquerade address
    assert ask(lab, lab.ext, "10.96.0.20", 80)[0][1] == EXT_IP  # via the VIP: not masqueraded


def test_hairpin_pod_reaches_itself(lab: Lab, proxy: ServiceProxy) -> None:
    proxy.update(svc("self", "10.96.0.30"), [EPS["ep1"]])
    assert ask(lab, lab.pods["ep1"], "10.96.0.30", 80, n=3) == [("ep1", HOST_IP)] * 3
    assert f"{EPS['ep1']} . {EPS['ep1']}" in lab.nft("list set ip podnet-svc hairpin")


def test_session_affinity_keeps_client_on_one_endpoint(lab: Lab, proxy: ServiceProxy) -> None:
    sticky = svc("sticky", "10.96.0.40", session_affinity="ClientIP", affinity_timeout=600)
    proxy.update(sticky, list(EPS.values()))
    first = {i for i, _ in ask(lab, lab.cli, "10.96.0.40", 80, n=30)}
    assert len(first) == 1, first
    chosen = first.pop()
    table = lab.nft("list table ip podnet-svc")
    sets = re.findall(r"set (aff-\S+) \{[^}]*elements = \{ ([^}]*)\}", table)
    assert len(sets) == 1 and CLIENT_IP in sets[0][1], sets  # remembered in exactly one set
    assert sets[0][0].endswith(f"{int.from_bytes(socket.inet_aton(EPS[chosen])):08x}")
    # the chosen endpoint goes away: the client moves, and sticks to its new endpoint
    proxy.update(sticky, [ip for role, ip in EPS.items() if role != chosen])
    second = {i for i, _ in ask(lab, lab.cli, "10.96.0.40", 80, n=30)}
    assert len(second) == 1 and chosen not in second, second


def test_no_endpoints_refuses_at_once(lab: Lab, proxy: ServiceProxy) -> None:
    proxy.update(svc("empty", "10.96.0.50", type="NodePort", node_port=30050), [])
    proxy.update(svc("dns", "10.96.0.53", 53, protocol="udp"), [])

    def tcp(addr: str, port: int) -> Callable[[], float]:
        def run() -> float:
            start = time.monotonic()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((addr, port), timeout=2)
            return time.monotonic() - start
        return run

    assert in_ns(lab, lab.cli, tcp("10.96.0.50", 80)) < 0.1  # type: ignore[operator]
    assert in_ns(lab, lab.ext, tcp(EXT_GW, 30050)) < 0.1  # type: ignore[operator]
    with pytest.raises(ConnectionRefusedError):  # UDP: ICMP port unreachable
        ask_udp(lab, lab.cli, "10.96.0.53", 53)
    assert "10.96.0.50 . tcp . 80" in lab.nft("list set ip podnet-svc no-ep-ips")
    proxy.update(svc("empty", "10.96.0.50", type="NodePort", node_port=30050), [EPS["ep3"]])
    assert ask(lab, lab.cli, "10.96.0.50", 80) == [("ep3", CLIENT_IP)]
    assert "10.96.0.50" not in lab.nft("list set ip podnet-svc no-ep-ips")


def test_bad_input_leaves_ruleset_unchanged(lab: Lab, proxy: ServiceProxy, tmp_path) -> None:
    web = svc("web", "10.96.0.10")
    proxy.sync_all([web], {"web": [EPS["ep1"]]})
    before = lab.ruleset()
    alloc = ServiceAllocator(SqliteStore(str(tmp_path / "s.db")), cidr="10.96.1.0/30")
    alloc.create(Service("a", (ServicePort(80),)))
    alloc.create(Service("b", (ServicePort(80),)))

    def port_out_of_range() -> None:
        proxy.update(Service.from_dict({"name": "x", "cluster_ip": "10.96.0.9",
                                        "ports": [{"port": 65536}]}), [EPS["ep1"]])

    def unknown_protocol() -> None:
        proxy.update(svc("x", "10.96.0.9", protocol="icmp"), [EPS["ep1"]])

    def duplicate_name_in_sync() -> None:
        proxy.sync_all([web, svc("web", "10.96.0.12")], {"web": [EPS["ep2"]]})

    def duplicate_name_in_store() -> None:
        alloc.create(Service("a", (ServicePort(81),)))

    def cidr_exhausted() -> None:
        proxy.update(alloc.create(Service("c", (ServicePort(80),))), [EPS["ep1"]])

    def vip_taken() -> None:
        proxy.update(svc("web2", "10.96.0.10"), [EPS["ep2"]])

    def bad_endpoint() -> None:
        proxy.update(svc("x", "10.96.0.9"), ["10.244.0.300"])

    for bad, code, words in [
        (port_out_of_range, INVALID_CONFIG, "port 65536 out of range 1-65535"),
        (unknown_protocol, INVALID_CONFIG, "unknown protocol 'icmp'"),
        (duplicate_name_in_sync, INVALID_CONFIG, "duplicate service name: web"),
        (duplicate_name_in_store, IN_USE, "service name already in use: a"),
        (cidr_exhausted, POOL_EXHAUSTED, "service CIDR 10.96.1.0/30 exhausted"),
        (vip_taken, IN_USE, "cluster IP 10.96.0.10 port 80/tcp already used by service web"),
        (bad_endpoint, INVALID_CONFIG, "invalid endpoint address"),
    ]:
        with pytest.raises(PodnetError) as err:
            bad()
        assert err.value.code == code and words in str(err.value), (bad.__name__, err.value)
        assert lab.ruleset() == before, bad.__name__
    assert proxy.services == {"web": web}


def test_full_resync_is_idempotent_and_repairs(lab: Lab, proxy: ServiceProxy) -> None:
    services = [
        svc("web", "10.96.0.10"),
        svc("np", "10.96.0.20", type="NodePort", node_port=30080),
        svc("sticky", "10.96.0.40", session_affinity="ClientIP"),
        svc("empty", "10.96.0.50"),
    ]
    eps = {"web": list(EPS.values()), "np": [EPS["ep2"]], "sticky": [EPS["ep1"], EPS["ep3"]]}
    proxy.sync_all(services, eps)
    text = lab.nft("list table ip podnet-svc")
    restarted = ServiceProxy(lab.path(lab.host))  # an agent restart: empty memory
    restarted.sync_all(services, eps)
    assert lab.nft("list table ip podnet-svc") == text
    # incremental changes, then a full sync of the same state: nothing moves
    restarted.update(svc("web", "10.96.0.10"), [EPS["ep1"]])
    restarted.remove("np")
    restarted.update(services[1], eps["np"])
    restarted.update(svc("web", "10.96.0.10"), eps["web"])
    incremental = lab.nft("list table ip podnet-svc")
    assert blocks(incremental) == blocks(text)  # same objects; np's chain is now listed last
    restarted.sync_all(services, eps)
    assert lab.nft("list table ip podnet-svc") == incremental
    # drift behind our back is repaired, and affinity state survives the resync
    ask(lab, lab.cli, "10.96.0.40", 80)
    web_chain = chain_name("web", ServicePort(80))
    listing = lab.nft(f"-a list chain ip podnet-svc {web_chain}")
    handle = re.search(r"dnat to .* # handle (\d+)", listing)
    assert handle
    lab.nft(f"delete rule ip podnet-svc {web_chain} handle {handle.group(1)}")
    lab.nft("add chain ip podnet-svc rogue")
    lab.nft("'add element ip podnet-svc svc-ips { 10.96.9.9 . tcp . 1 : goto rogue }'")
    restarted.sync_all(services, eps)
    after = lab.nft("list table ip podnet-svc")
    assert re.sub(r"\n\t+elements = \{[^}]*expires[^}]*\}", "", after) == incremental
    assert CLIENT_IP in after  # the client's affinity entry is still there
    restarted.close()


def test_drift_and_incompatible_objects_are_rebuilt(lab: Lab, proxy: ServiceProxy) -> None:
    web, other = svc("web", "10.96.0.10"), svc("other", "10.96.0.11")
    proxy.sync_all([web], {"web": [EPS["ep1"]]})
    lab.nft("delete table ip podnet-svc")  # someone flushed our table: the delta fails...
    proxy.update(other, [EPS["ep2"]])  # ...and the proxy falls back to a full sync
    assert ask(lab, lab.cli, "10.96.0.10", 80) == [("ep1", CLIENT_IP)]
    assert ask(lab, lab.cli, "10.96.0.11", 80) == [("ep2", CLIENT_IP)]
    text = lab.nft("list table ip podnet-svc")
    # an object of ours with another shape (an older podnet?): the table is started over
    lab.nft("delete table ip podnet-svc")
    lab.nft("'add table ip podnet-svc; add set ip podnet-svc hairpin { type ipv4_addr; }'")
    proxy.sync_all([web, other], {"web": [EPS["ep1"]], "other": [EPS["ep2"]]})
    assert lab.nft("list table ip podnet-svc") == text


def test_runs_in_given_namespace_only(lab: Lab, proxy: ServiceProxy) -> None:
    root_before = subprocess.run(["nft", "list", "ruleset"], capture_output=True,
                                 text=True).stdout
    proxy.update(svc("web", "10.96.0.10"), [EPS["ep1"]])
    assert "podnet-svc" in lab.ruleset()
    assert subprocess.run(["nft", "list", "ruleset"], capture_output=True,
                          text=True).stdout == root_before
    with pytest.raises(PodnetError) as err:
        ServiceProxy("/run/netns/pnt-does-not-exist")
    assert "network namespace does not exist" in str(err.value)


def test_backends_write_the_same_table(lab: Lab, proxy: ServiceProxy) -> None:
    services = [svc("web", "10.96.0.10"), svc("sticky", "10.96.0.40", session_affinity="ClientIP")]
    eps = {"web": list(EPS.values()), "sticky": [EPS["ep2"]]}
    proxy.sync_all(services, eps)
    text = lab.nft("list table ip podnet-svc")
    other = ServiceProxy(lab.path(lab.host), backend="cli" if proxy.nft.backend == "lib" else "lib")
    try:
        other.sync_all(services, eps)
        assert other.table() == text
        other.update(svc("web", "10.96.0.10"), [EPS["ep3"]])
        assert ask(lab, lab.cli, "10.96.0.10", 80) == [("ep3", CLIENT_IP)]
    finally:
        other.close()
