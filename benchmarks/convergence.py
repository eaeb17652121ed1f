"""Convergence at 30 hosts: how long after a new host's agent starts can every other host
reach the new host's pod? Compared across podnet's two stores (SQLite, etcd).

What is measured, per store: a podnet lab of 30 hosts x 1 pod (backend vxlan by default;
short timing knobs, but a resync period above the 5 s bar, so what is timed is the
store's watch, not the periodic resync), its up time, and then, several times, a new
host added with `lab.add_host(wait_peers=False)` (which returns once the new agent holds
its lease and its pod is attached, without waiting for the other hosts).

How: the clock starts at the new agent's process start (its start time in
/proc/PID/stat, clock ticks since boot, 10 ms resolution). While add_host() runs in a
worker thread, the script watches the new namespaces over netlink: as soon as the new
host's bridge holds its gateway address (the lease is taken), every other host's pod
sends an ICMP echo to that address every `--interval` seconds (answered once that peer
has programmed the new host and the new host its peers); as soon as the new pod has its
address and its eth0 is up, every other host's pod probes the pod as well (the issue's
measure). One raw socket per pod namespace, all in one select loop; the time of a pair
is the kernel receive timestamp of its first reply. The lab's own view (lease seen,
add_host() returned) is printed beside, so a slow pair can be put down to the peers or
to the new host itself. It reports p50, p90 and max per store against the bars (must:
every pair within 5 s; goal: within 2 s), the lab's up time, the CPU the idle agents use
(their user+sys time over a window), and the load average (a shared machine: the
numbers move with it).

Every namespace starts with one prefix (`pnb` + 4 hex) and is removed at the end, also on
failure; only the labs' own processes are stopped, by PID (the lab does that).

    python3 benchmarks/convergence.py --store both --hosts 30 --new-hosts 5
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import ipaddress
import math
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import labbench as lb

from podnet.errors import PodnetError  # after labbench, which puts src/ on sys.path
from podnet.kernel import netns
from podnet.lab import Lab, Topo
from podnet.lab.ping import SO_TIMESTAMPNS, echo_request, parse_reply
from podnet.lab.state import HostState
from podnet.lab.topo import POD_CIDR

CLK_TCK = os.sysconf("SC_CLK_TCK")
MUST_S = 5.0
GOAL_S = 2.0
POD_NET = ipaddress.IPv4Network(POD_CIDR)
IFF_UP = 0x1


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start(pid: int) -> float:
    """A process's start time on the CLOCK_BOOTTIME scale (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[19]) / CLK_TCK


# -- the prober -------------------------------------------------------------------------------
class Prober:
    """One raw ICMP socket per source pod namespace; echo requests to the current targets
    every `interval`; the first reply per (source, target) is kept."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.socks: dict[str, tuple[socket.socket, int]] = {}  # source name -> (sock, ident)
        self._seq = 0
        # kernel timestamps are CLOCK_REALTIME: shift them onto CLOCK_BOOTTIME
        self.offset = boottime() - time.time()

    def add_source(self, name: str, ns: str) -> None:
        sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.socks[name] = (sock, (os.getpid() * 131 + len(self.socks)) & 0xFFFF)

    def close(self) -> None:
        for sock, _ident in self.socks.values():
            sock.close()
        self.socks.clear()

    def send(self, pending: dict[tuple[str, str], str]) -> None:
        """pending: (source, target key) -> target address, for unanswered pairs."""
        self._seq = (self._seq + 1) & 0xFFFF
        for (src, _key), ip in pending.items():
            sock, ident = self.socks[src]
            with contextlib.suppress(OSError):
                sock.sendto(echo_request(ident, self._seq), (ip, 0))

    def collect(self, pending: dict[tuple[str, str], str], found: dict[tuple[str, str], float],
                until: float) -> None:
        """Read replies until boottime `until`; answered pairs move to `found`."""
        by_fd = {sock.fileno(): (name, sock, ident) for name, (sock, ident) in self.socks.items()}
        while True:
            left = until - boottime()
            if left <= 0:
                return
            ready, _w, _x = select.select(list(by_fd), [], [], left)
            for fd in ready:
                name, sock, ident = by_fd[fd]
                while True:
                    try:
                        packet, anc, _flags, _addr = sock.recvmsg(2048, 64)
                    except (BlockingIOError, InterruptedError):
                        break
                    reply = parse_reply(packet)
                    if reply is None or reply[1] != ident:
                        continue
                    for (src, key), ip in list(pending.items()):
                        if src == name and ip == reply[0]:
                            found[(src, key)] = self._rx_time(anc)
                            del pending[(src, key)]

    def _rx_time(self, anc: list[tuple[int, int, bytes]]) -> float:
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = struct.unpack("@qq", data[:16])
                return sec + nsec / 1e9 + self.offset
        return boottime()


# -- one new host ---------------------------------------------------------------------------
class AddrWatch:
    """IPv4 addresses of a namespace, dumped over a netlink socket opened inside it once
    the namespace exists: the moment the new host's bridge gets its gateway address (its
    lease is taken) and the new pod its address (CNI ADD configured it), without waiting
    for the lab's own bookkeeping."""

    def __init__(self) -> None:
        self.iprs: dict[str, Any] = {}

    def addresses(self, ns: str) -> list[tuple[str, int, str]]:
        """(address, prefix length, label); [] while the namespace is not there yet."""
        from pyroute2 import IPRoute

        ipr = self.iprs.get(ns)
        if ipr is None:
            if not netns.exists(ns):
                return []
            try:
                sock = netns.socket_in(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
            except (OSError, PodnetError):
                return []
            ipr = self.iprs[ns] = IPRoute(use_socket=sock)
        try:
            return [(m.get_attr("IFA_ADDRESS"), m["prefixlen"], m.get_attr("IFA_LABEL") or "")
                    for m in ipr.get_addr(family=socket.AF_INET)]
        except OSError:
            return []

    def up(self, ns: str, ifname: str) -> bool:
        """The interface is administratively up (checked after addresses(ns) opened ns)."""
        ipr = self.iprs.get(ns)
        if ipr is None:
            return False
        try:
            return any(m.get_attr("IFLA_IFNAME") == ifname and m["flags"] & IFF_UP
                       for m in ipr.get_links())
        except OSError:
            return False

    def close(self) -> None:
        for ipr in self.iprs.values():
            ipr.close()
        self.iprs.clear()


def gateway_of(addrs: list[tuple[str, int, str]]) -> str | None:
    """The pod gateway: an x.y.z.1 address in the pod CIDR on a non-/32 interface."""
    for ip, plen, _label in addrs:
        if plen < 32 and ipaddress.IPv4Address(ip) in POD_NET and ip.endswith(".1"):
            return ip
    return None


def pod_ip_of(addrs: list[tuple[str, int, str]]) -> str | None:
    for ip, _plen, label in addrs:
        if label == "eth0" and ipaddress.IPv4Address(ip) in POD_NET:
            return ip
    return None


@dataclass
class Addition:
    host: str
    peers: int
    spawn: float = math.nan            # boottime of the agent's process start
    gw_addr: float = math.nan          # its bridge has the gateway address (s after spawn)
    ready: float = math.nan            # the lab saw its lease (s after spawn)
    pod_addr: float = math.nan         # its pod has its address and is up (s after spawn)
    add_host_s: float = math.nan       # how long add_host() took (from its call)
    gw: dict[str, float] = field(default_factory=dict)   # peer -> s after spawn
    pod: dict[str, float] = field(default_factory=dict)  # peer -> s after spawn

    def missing(self, which: dict[str, float]) -> int:
        return self.peers - len(which)


def add_and_probe(lab: Lab, prober: Prober, timeout: float) -> Addition:
    """add_host() in a worker thread; meanwhile watch the new namespaces and probe."""
    before = {h.name for h in lab.state.hosts}
    sources = list(lab.pods)
    watch = AddrWatch()
    started = boottime()
    add_done = math.nan
    t_gw = t_ready = t_pod = math.nan
    new: HostState | None = None
    pending: dict[tuple[str, str], str] = {}
    found: dict[tuple[str, str], float] = {}
    try:
        with cf.ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(lab.add_host, wait_peers=False)
            deadline = started + timeout
            while boottime() < deadline:
                if new is None:
                    new = next((h for h in lab.state.hosts if h.name not in before), None)
                if new is not None and math.isnan(t_gw):
                    gw = gateway_of(watch.addresses(new.netns))
                    if gw:
                        t_gw = boottime()
                        pending.update({(p.name, "gw"): gw for p in sources})
                if new is not None and math.isnan(t_ready) and new.subnet:
                    t_ready = boottime()
                if new is not None and math.isnan(t_pod) and new.pods:
                    pod_ns = new.pods[0].netns
                    ip = pod_ip_of(watch.addresses(pod_ns))
                    # up as well: a probe that beats the link up leaves the new host's ARP
                    # for the pod INCOMPLETE, and its retry comes a second later
                    if ip and watch.up(pod_ns, "eth0"):
                        t_pod = boottime()
                        pending.update({(p.name, "pod"): ip for p in sources})
                if fut.done():
                    fut.result()  # raises add_host's error, if any
                    if math.isnan(add_done):
                        add_done = boottime()
                if not math.isnan(t_pod) and not pending and fut.done():
                    break
                if pending:
                    prober.send(pending)
                prober.collect(pending, found, boottime() + prober.interval)
            fut.result()
    finally:
        watch.close()
    assert new is not None and new.agent_pid is not None
    add = Addition(new.name, len(sources))
    add.add_host_s = (add_done if not math.isnan(add_done) else boottime()) - started
    add.spawn = process_start(new.agent_pid)
    add.gw_addr, add.ready, add.pod_addr = (t - add.spawn for t in (t_gw, t_ready, t_pod))
    hosts_of = {p.name: p.host for p in sources}
    for (src, key), t in found.items():
        (add.gw if key == "gw" else add.pod)[hosts_of[src]] = t - add.spawn
    for p in new.pods:  # the new pod probes the next new host
        prober.add_source(p.name, p.netns)
    return add


# -- per store --------------------------------------------------------------------------------
@dataclass
class StoreRun:
    store: str
    up_s: float = math.nan
    idle_cpu: float = math.nan  # cores used by all agents while idle
    additions: list[Addition] = field(default_factory=list)


def agents_cpu(lab: Lab) -> float:
    total = 0.0
    for h in lab.hosts:
        pid = lab.agent_pid(h.name)
        if pid is None:
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


def run_store(store: str, pfx: str, args: argparse.Namespace) -> StoreRun:
    run = StoreRun(store)
    lab = Lab(Topo(hosts=args.hosts, pods_per_host=1), backend=args.backend, store=store,
              name=f"{pfx}{store[:2]}", lease_ttl=args.lease_ttl,
              renew_margin=args.renew_margin, resync_period=args.resync_period,
              start_timeout=args.start_timeout)
    prober = Prober(args.interval)
    clock = lb.Stopwatch()
    try:
        lab.up()
        run.up_s = clock()
        lb.console.print(f"{store}: {args.hosts}-host lab up in {run.up_s:.1f} s "
                         f"(load {lb.loadavg()})")
        cpu0, t0 = agents_cpu(lab), time.monotonic()
        time.sleep(args.idle_seconds)
        run.idle_cpu = (agents_cpu(lab) - cpu0) / (time.monotonic() - t0)
        for p in lab.pods:
            prober.add_source(p.name, p.netns)
        for i in range(args.new_hosts):
            add = add_and_probe(lab, prober, args.timeout)
            run.additions.append(add)
            pods = list(add.pod.values())
            lb.console.print(
                f"{store}: +{add.host} gateway up {add.gw_addr:.2f} s, pod addressed "
                f"{add.pod_addr:.2f} s after its agent started; pod reachable from "
                f"{len(pods)}/{add.peers} hosts, p50 {lb.fmt(lb.median(pods))} s, max "
                f"{lb.fmt(max(pods) if pods else math.nan)} s (load {lb.loadavg()})")
            if i + 1 < args.new_hosts:
                time.sleep(args.settle)
    finally:
        prober.close()
        lab.down()
    return run


# -- report ---------------------------------------------------------------------------------
def summary_rows(run: StoreRun) -> tuple[list[list[str]], bool]:
    rows = []
    for a in run.additions:
        pods, gws = list(a.pod.values()), list(a.gw.values())
        rows.append([run.store, a.host, str(a.peers), lb.fmt(a.gw_addr), lb.fmt(a.ready),
                     lb.fmt(a.pod_addr), lb.fmt(a.add_host_s),
                     lb.fmt(lb.median(gws)), lb.fmt(max(gws) if gws else math.nan),
                     lb.fmt(lb.median(pods)), lb.fmt(max(pods) if pods else math.nan),
                     str(a.missing(a.pod))])
    allpods = [t for a in run.additions for t in a.pod.values()]
    missing = sum(a.missing(a.pod) for a in run.additions)
    worst = max(allpods) if allpods and not missing else math.inf
    ok = worst <= MUST_S
    return rows, ok


def report(runs: list[StoreRun], args: argparse.Namespace) -> bool:
    c = lb.console
    rows: list[list[str]] = []
    ok_all = True
    for run in runs:
        r, ok = summary_rows(run)
        rows += r
        ok_all &= ok
    c.print(lb.table(
        "Each new host (seconds after its agent's process started; gw = the new host's "
        "gateway address, pod = its pod)",
        ["store", "new host", "peers", "gateway up", "lab saw lease", "pod addressed",
         "add_host() took",
         "gw p50", "gw max", "pod p50", "pod max", "unreached"], rows))
    rows = []
    for run in runs:
        pods = [t for a in run.additions for t in a.pod.values()]
        gws = [t for a in run.additions for t in a.gw.values()]
        after = [t - a.pod_addr for a in run.additions for t in a.pod.values()]
        missing = sum(a.missing(a.pod) for a in run.additions)
        worst = max(pods) if pods and not missing else math.inf
        verdict = lb.verdict(worst <= MUST_S) + (
            " goal " + ("met" if worst <= GOAL_S else "[yellow]not met[/yellow]")
            if worst <= MUST_S else "")
        rows.append([run.store, lb.fmt(run.up_s, 1), f"{run.idle_cpu:.2f}",
                     str(len(pods)), lb.fmt(lb.median(pods)), lb.fmt(lb.pct(pods, 90)),
                     lb.fmt(max(pods) if pods else math.nan), str(missing),
                     lb.fmt(lb.median(gws)), lb.fmt(max(gws) if gws else math.nan),
                     lb.fmt(lb.median(after), 3), lb.fmt(max(after) if after else math.nan, 3),
                     verdict])
    c.print(lb.table(
        f"Per store: {args.hosts} hosts + {args.new_hosts} added, backend {args.backend}, "
        f"lease TTL {args.lease_ttl:g} s, renew margin {args.renew_margin:g} s, resync "
        f"{args.resync_period:g} s, probe every {args.interval * 1000:g} ms",
        ["store", "lab up s", "idle agents CPU (cores)", "pairs", "pod p50 s", "pod p90 s",
         "pod max s", "unreached", "gw p50 s", "gw max s", "pod p50 after addressed",
         "pod max after addressed", f"<= {MUST_S:g} s (goal {GOAL_S:g} s)"], rows))
    return ok_all


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", choices=("sqlite", "etcd", "both"), default="both")
    ap.add_argument("--hosts", type=int, default=30)
    ap.add_argument("--new-hosts", type=int, default=5, help="hosts added one after another")
    ap.add_argument("--backend", choices=("vxlan", "host-gw", "udp"), default="vxlan")
    ap.add_argument("--lease-ttl", type=float, default=15.0)
    ap.add_argument("--renew-margin", type=float, default=5.0)
    ap.add_argument("--resync-period", type=float, default=10.0,
                    help="above the 5 s bar, so the watch (not the resync) is measured")
    ap.add_argument("--interval", type=float, default=0.01, help="probe interval, seconds")
    ap.add_argument("--timeout", type=float, default=20.0,
                    help="give up on a new host's unreached pairs after this many seconds")
    ap.add_argument("--settle", type=float, default=1.0, help="pause between additions")
    ap.add_argument("--idle-seconds", type=float, default=20.0,
                    help="window for the agents' idle CPU (two resync periods by default)")
    ap.add_argument("--start-timeout", type=float, default=180.0,
                    help="how long the lab waits for its agents at start")
    args = ap.parse_args()
    stores = ["sqlite", "etcd"] if args.store == "both" else [args.store]
    pfx = lb.new_prefix()
    lb.console.print(f"prefix {pfx}; {lb.machine_line()}")
    runs: list[StoreRun] = []
    with lb.owned_namespaces(pfx):
        for store in stores:
            runs.append(run_store(store, pfx, args))
    ok = report(runs, args)
    lb.console.print(f"load average at the end: {lb.loadavg()}")
    lb.console.print("must (every pair within 5 s): " + ("[green]met[/green]" if ok
                                                          else "[red]missed[/red]"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
