"""Services at scale: podnet's nftables proxy against kube-proxy's iptables shape.

What is measured, for 10 / 1,000 / 10,000 ClusterIP services with 3 endpoints each:
- initial sync into a fresh namespace (nft: `ServiceProxy.sync_all`, render + one `nft -f`
  transaction; iptables: one `iptables-legacy-restore` of kube-proxy's nat table);
- a one-service update at 10,000 (nft: `ServiceProxy.update` changing one endpoint, one small
  transaction, with the nsenter+nft CLI and with the in-process libnftables backend;
  iptables: kube-proxy's partial sync, `iptables-legacy-restore --noflush` rewriting
  KUBE-SERVICES and the changed service's chains);
- first-packet latency: the time of a TCP connect() to a VIP (SYN through DNAT to a real
  listener, SYN-ACK back), from a client pod; every connect is a new conntrack entry, so
  every SYN walks the nat rules. The measured service is the LAST one added, which is the
  worst case for iptables (KUBE-SERVICES is a linear list) and no different for nftables.
- the load format: the same 10k ruleset loaded as `nft -f` text and as `nft -j -f` JSON.

Six independent "sites" (nft and iptables x 10 / 1k / 10k), each a host namespace with a
bridge, a client pod and an endpoint pod (three addresses, one listener), all alive at
once; latency rounds visit the sites in a shuffled order each round, so drift hits all
alike. The iptables reference uses iptables-legacy (kube-proxy's classic datapath: a
linear walk of KUBE-SERVICES in the kernel), with kube-proxy's chain names, comments,
KUBE-MARK-MASQ / KUBE-POSTROUTING and `-m statistic --mode random --probability`.

All namespaces are named `pnb<4 hex>-*` and removed at the end, also on failure.

    python3 benchmarks/services_scale.py [--services 10000] [--rounds 10] [--connects 200]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import random
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import benchlib as bl

from podnet.kernel import netns as kns
from podnet.services.model import Service, ServicePort
from podnet.services.proxy import ServiceProxy

HOST_IP = "10.244.0.1"
CLIENT_IP = "10.244.255.20"
REAL_EPS = ["10.244.255.11", "10.244.255.12", "10.244.255.13"]
TARGET = 8080
VIP_BASE = int(ipaddress.IPv4Address("10.96.0.1"))
MUSTS = {"sync": 5.0, "update": 0.100, "latency": 1.2}
GOALS = {"sync": 2.0, "update": 0.050, "latency": 1.1}


# -- services -------------------------------------------------------------------------------------
def vip(i: int) -> str:
    return str(ipaddress.IPv4Address(VIP_BASE + i))


def fake_endpoints(i: int) -> list[str]:
    """Three pod addresses in 10.244.1.0-10.244.240.255 that nobody answers for."""
    out = []
    for k in range(3):
        n = 3 * i + k
        out.append(f"10.244.{1 + (n // 250) % 240}.{1 + n % 250}")
    return out


def workload(n: int) -> tuple[list[Service], dict[str, list[str]]]:
    """n services; the last one (the measured one) has the three real endpoints."""
    services = [Service(f"svc-{i}", (ServicePort(80, target_port=TARGET),), cluster_ip=vip(i))
                for i in range(n)]
    eps = {s.name: fake_endpoints(i) for i, s in enumerate(services)}
    eps[services[-1].name] = list(REAL_EPS)
    return services, eps


def kube_hash(prefix: str, text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def iptables_rules(n: int, only: int | None = None, eps_override: list[str] | None = None) -> str:
    """kube-proxy's iptables-mode nat table for n services (or its partial sync for `only`)."""
    services, eps = workload(n)
    head = ["*nat"]
    body: list[str] = []
    if only is None:
        head += [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                 ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]",
                 ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]",
                 ":KUBE-MARK-MASQ - [0:0]"]
        body += [
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A POSTROUTING -m comment --comment "kubernetes postrouting rules"'
            " -j KUBE-POSTROUTING",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring'
            ' SNAT" -j MASQUERADE --random-fully',
        ]
    else:
        head.append(":KUBE-SERVICES - [0:0]")
    chains: list[str] = []
    for i, svc in enumerate(services):
        name = f"default/{svc.name}:http"
        svc_chain = kube_hash("KUBE-SVC-", name + "tcp")
        body.append(f"-A KUBE-SERVICES -d {svc.cluster_ip}/32 -p tcp -m comment --comment"
                    f' "{name} cluster IP" -m tcp --dport 80 -j {svc_chain}')
        if only is not None and i != only:
            continue
        endpoints = eps_override if (only == i and eps_override) else eps[svc.name]
        chains.append(f":{svc_chain} - [0:0]")
        body.append(f"-A {svc_chain} ! -s 10.244.0.0/16 -d {svc.cluster_ip}/32 -p tcp -m comment"
                    f' --comment "{name} cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ')
        for k, ep in enumerate(endpoints):
            sep = kube_hash("KUBE-SEP-", name + "tcp" + ep)
            chains.append(f":{sep} - [0:0]")
            left = len(endpoints) - k
            pick = (f"-m statistic --mode random --probability {1 / left:0.10f} "
                    if left > 1 else "")
            body.append(f'-A {svc_chain} -m comment --comment "{name} -> {ep}:{TARGET}" '
                        f"{pick}-j {sep}")
            body.append(f'-A {sep} -s {ep}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
            body.append(f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp'
                        f" -j DNAT --to-destination {ep}:{TARGET}")
    body.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE:'
                ' this must be the last rule in this chain" -m addrtype --dst-type LOCAL'
                " -j KUBE-NODEPORTS")
    return "\n".join(head + chains + body + ["COMMIT", ""])


# -- sites ----------------------------------------------------------------------------------------
def ip_batch(lines: list[str], netns: str | None = None) -> None:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(lines), text=True, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"ip -batch in {netns}: {proc.stderr}")


def in_ns(name: str, argv: list[str], stdin: str = "") -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{name}", *argv], input=stdin,
                          text=True, capture_output=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} in {name} failed: {proc.stderr[:2000]}")
    return seconds


@dataclass
class Site:
    """A host namespace with a bridge, a client pod and an endpoint pod (three addresses)."""

    prefix: str
    tag: str
    host: str = ""
    client: str = ""
    pod: str = ""
    listener: socket.socket | None = None

    def build(self) -> Site:
        self.host, self.client, self.pod = (f"{self.prefix}-{self.tag}-{r}"
                                            for r in ("host", "cli", "ep"))
        bl.create_netns([self.host, self.client, self.pod])
        h, c, p = self.host, self.client, self.pod
        ip_batch(["link set lo up", "link add br0 type bridge",
                  f"addr add {HOST_IP}/16 dev br0", "link set br0 up",
                  f"link add vcli type veth peer name eth0 netns {c}",
                  f"link add vep type veth peer name eth0 netns {p}",
                  "link set vcli master br0 up", "link set vep master br0 up"], h)
        ip_batch(["link set lo up", f"addr add {CLIENT_IP}/16 dev eth0", "link set eth0 up",
                  f"route add default via {HOST_IP}"], c)
        ip_batch(["link set lo up", *(f"addr add {ep}/16 dev eth0" for ep in REAL_EPS),
                  "link set eth0 up", f"route add default via {HOST_IP}"], p)
        kns.run_in(f"/run/netns/{h}", lambda: open("/proc/sys/net/ipv4/ip_forward", "w")
                   .write("1"))
        self.listener = kns.socket_in(f"/run/netns/{p}", socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("0.0.0.0", TARGET))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        return self

    def drain(self) -> None:
        """Accept and drop queued connections, between batches: a thread accepting during
        the batch would contend for the listener's lock with the SYNs being measured."""
        assert self.listener is not None
        while True:
            try:
                self.listener.accept()[0].close()
            except (BlockingIOError, OSError):
                return

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    def connects(self, addr: str, count: int) -> list[float]:
        """`count` TCP connect() latencies in microseconds, from the client pod, on CPU 0."""

        def run() -> list[float]:
            os.sched_setaffinity(0, {0})
            linger = struct.pack("ii", 1, 0)
            out = []
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)  # close with RST
                s.settimeout(2)
                t0 = time.perf_counter_ns()
                s.connect((addr, 80))
                out.append((time.perf_counter_ns() - t0) / 1000)
                s.close()
            return out

        try:
            return kns.run_in(f"/run/netns/{self.client}", run)
        finally:
            self.drain()


# -- measurements ---------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def nft_site(site: Site, n: int, report: dict, measure_update: bool) -> None:
    services, eps = workload(n)
    proxy = ServiceProxy(f"/run/netns/{site.host}")  # the default backend
    report[f"nft sync {n}"] = [timed(lambda: proxy.sync_all(services, eps))]
    report["backend"] = proxy.nft.backend
    if measure_update:
        before = proxy.table()
        report["nft resync"] = [timed(lambda: proxy.sync_all(services, eps)) for _ in range(3)]
        report["nft resync identical"] = proxy.table() == before
    proxy.close()


def update_rounds(nft: Site, ipt: Site, n: int, rounds: int, report: dict) -> None:
    """One-service updates, interleaved (shuffled each round) so machine load hits all alike.

    The CLI and library proxies change different services, so each one's view stays true.
    """
    services, eps = workload(n)
    proxies = {b: ServiceProxy(f"/run/netns/{nft.host}", backend=b) for b in ("cli", "lib")}
    victims = {"cli": n // 3, "lib": 2 * n // 3, "ipt": n // 2}
    octet = {"cli": 251, "lib": 252, "ipt": 253}  # endpoints the updates swap in
    for px in proxies.values():
        px.sync_all(services, eps)  # unchanged table; gives each proxy its view
    # A full sync replaces ~40k rules; the kernel frees the old ones in the background for a
    # second or two, and updates during that time take about twice as long.
    time.sleep(3)
    samples: dict[str, list[float]] = {k: [] for k in victims}

    def step(kind: str, k: int) -> float:
        i = victims[kind]
        new_eps = fake_endpoints(i)[:2] + ([f"10.244.{octet[kind]}.{k % 200 + 1}"] if k % 2
                                            else [])
        if kind == "ipt":
            rules = iptables_rules(n, only=i, eps_override=new_eps)
            return in_ns(ipt.host, ["iptables-legacy-restore", "-w", "--noflush"], rules)
        return timed(lambda: proxies[kind].update(services[i], new_eps))

    for k in range(rounds):
        kinds = list(victims)
        random.shuffle(kinds)
        for kind in kinds:
            samples[kind].append(step(kind, k))
    for kind in ("cli", "lib"):
        report[f"nft update {kind}"] = samples[kind]
        proxies[kind].close()
    report["ipt update"] = samples["ipt"]


def fresh_sync_samples(prefix: str, n: int, count: int, report: dict) -> None:
    """More initial-sync samples, each into a brand-new namespace (nft and iptables)."""
    services, eps = workload(n)
    rules = iptables_rules(n)
    for k in range(count):
        ns = f"{prefix}-fresh{k}"
        bl.create_netns([ns])
        try:
            proxy = ServiceProxy(f"/run/netns/{ns}")
            report[f"nft sync {n}"].append(timed(lambda p=proxy: p.sync_all(services, eps)))
            proxy.close()
            report[f"ipt sync {n}"].append(
                in_ns(ns, ["iptables-legacy-restore", "-w"], rules))
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def format_samples(prefix: str, site: Site, report: dict) -> None:
    """Load the identical 10k ruleset as text and as JSON into fresh namespaces."""
    text = subprocess.run(["nsenter", f"--net=/run/netns/{site.host}", "nft", "list", "table",
                           "ip", "podnet-svc"], capture_output=True, text=True, check=True).stdout
    js = subprocess.run(["nsenter", f"--net=/run/netns/{site.host}", "nft", "-j", "list",
                         "table", "ip", "podnet-svc"], capture_output=True, text=True,
                        check=True).stdout
    # A listing names maps (whose elements jump to chains) before chains: load in
    # dependency order instead, as a generator of JSON would: table, chains, maps, rules.
    objs = [o for o in json.loads(js)["nftables"] if "metainfo" not in o]
    rank = {"table": 0, "chain": 1, "set": 2, "map": 2, "rule": 3}
    objs.sort(key=lambda o: rank[next(iter(o))])
    js = json.dumps({"nftables": [{"add": o} for o in objs]})
    report["load text"], report["load json"] = [], []
    for k in range(2):
        for kind, argv, data in (("text", ["nft", "-f", "-"], text),
                                 ("json", ["nft", "-j", "-f", "-"], js)):
            ns = f"{prefix}-fmt{kind}{k}"
            bl.create_netns([ns])
            try:
                report[f"load {kind}"].append(in_ns(ns, argv, data))
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=False)


def ipt_site(site: Site, n: int, report: dict) -> None:
    report[f"ipt sync {n}"] = [in_ns(site.host, ["iptables-legacy-restore", "-w"],
                                     iptables_rules(n))]


def latency_rounds(sites: dict[str, Site], rounds: int, count: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {tag: [] for tag in sites}
    target = {tag: vip(int(tag.split("-")[1]) - 1) for tag in sites}
    for tag, site in sites.items():  # warm up: ARP, caches, and proof that the path works
        site.connects(target[tag], 20)
    for _ in range(rounds):
        order = list(sites)
        random.shuffle(order)
        for tag in order:
            out[tag] += sites[tag].connects(target[tag], count)
    return out


# -- report ---------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--connects", type=int, default=200)
    ap.add_argument("--fresh", type=int, default=2, help="extra fresh-namespace sync samples")
    args = ap.parse_args()
    big = args.services
    sizes = [10, 1000, big] if big > 1000 else [10, big]
    prefix = "pnb" + secrets.token_hex(2)
    sites: dict[str, Site] = {}
    report: dict = {}
    try:
        for kind in ("nft", "ipt"):
            for n in sizes:
                sites[f"{kind}-{n}"] = Site(prefix, f"{kind}{n}").build()
        bl.console.print(f"[bold]services_scale[/bold]: {big} services x 3 endpoints, "
                         f"namespaces {prefix}-*, nft {nft_version()}, iptables-legacy")
        for n in sorted(sizes, reverse=True):
            nft_site(sites[f"nft-{n}"], n, report, measure_update=n == big)
            ipt_site(sites[f"ipt-{n}"], n, report)
        update_rounds(sites[f"nft-{big}"], sites[f"ipt-{big}"], big, 30, report)
        fresh_sync_samples(prefix, big, args.fresh, report)
        format_samples(prefix, sites[f"nft-{big}"], report)
        lat = latency_rounds(sites, args.rounds, args.connects)
    finally:
        for site in sites.values():
            site.close()
        bl.remove_prefix(prefix)
    print_report(report, lat, sizes)
    return 0


def nft_version() -> str:
    return subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.split()[1]


def print_report(report: dict, lat: dict[str, list[float]], sizes: list[int]) -> None:
    big = sizes[-1]
    med = bl.median
    nsync, isync = med(report[f"nft sync {big}"]), med(report[f"ipt sync {big}"])
    nupd, lupd, iupd = (med(report["nft update cli"]), med(report["nft update lib"]),
                        med(report["ipt update"]))
    lm = {tag: med(v) for tag, v in lat.items()}
    nl = lm[f"nft-{big}"] / lm["nft-10"]
    il = lm[f"ipt-{big}"] / lm["ipt-10"]
    rows = [
        [f"initial sync, {big} services ({report['backend']}, median of "
         f"{len(report[f'nft sync {big}'])})",
         ms(nsync), ms(isync), f"{nsync / isync:.2f}",
         f"<= {MUSTS['sync']:.0f} s / {GOALS['sync']:.0f} s",
         f"{bl.verdict(nsync <= MUSTS['sync'])} / {bl.verdict(nsync <= GOALS['sync'])}"],
        [f"one-service update at {big} (nsenter + nft CLI)", ms(nupd), ms(iupd),
         f"{nupd / iupd:.2f}", "<= 100 ms / 50 ms",
         f"{bl.verdict(nupd <= MUSTS['update'])} / {bl.verdict(nupd <= GOALS['update'])}"],
        [f"one-service update at {big} (libnftables in-process)", ms(lupd), ms(iupd),
         f"{lupd / iupd:.2f}", "<= 100 ms / 50 ms",
         f"{bl.verdict(lupd <= MUSTS['update'])} / {bl.verdict(lupd <= GOALS['update'])}"],
    ]
    for n in sizes:
        rows.append([f"connect latency, {n} services (median µs)", f"{lm[f'nft-{n}']:.1f}",
                     f"{lm[f'ipt-{n}']:.1f}", f"{lm[f'nft-{n}'] / lm[f'ipt-{n}']:.2f}", "", ""])
    rows.append([f"connect latency {big} / 10", f"{nl:.2f}x", f"{il:.2f}x", "",
                 "<= 1.2x / 1.1x",
                 f"{bl.verdict(nl <= MUSTS['latency'])} / {bl.verdict(nl <= GOALS['latency'])}"])
    bl.console.print(bl.table("podnet nftables vs kube-proxy iptables (legacy) shape",
                               ["measure", "podnet nft", "iptables", "nft/ipt", "must / goal",
                                "verdict"], rows))
    extra = [
        [f"full resync at {big}, unchanged (re-run, median of 3)", ms(med(report["nft resync"])),
         "identical text" if report["nft resync identical"] else "TEXT CHANGED"],
        [f"load the same {big} ruleset: nft -f text", ms(med(report["load text"])),
         f"{len(report['load text'])} samples"],
        [f"load the same {big} ruleset: nft -j -f JSON", ms(med(report["load json"])),
         f"JSON/text {med(report['load json']) / med(report['load text']):.2f}x"],
    ]
    for n in sizes[:-1]:
        extra.append([f"initial sync {n} services (nft / iptables)",
                      ms(med(report[f"nft sync {n}"])), ms(med(report[f"ipt sync {n}"]))])
    for tag in sorted(lat):
        extra.append([f"connect latency {tag}: p10 / p90 µs",
                      f"{bl.pct(lat[tag], 10):.1f}", f"{bl.pct(lat[tag], 90):.1f}"])
    extra.append(["update samples (ms): nft cli / lib / ipt, p90",
                  f"{bl.pct(report['nft update cli'], 90) * 1000:.0f} / "
                  f"{bl.pct(report['nft update lib'], 90) * 1000:.0f}",
                  f"{bl.pct(report['ipt update'], 90) * 1000:.0f}"])
    bl.console.print(bl.table("details", ["measure", "value", "note"], extra))


if __name__ == "__main__":
    sys.exit(main())
