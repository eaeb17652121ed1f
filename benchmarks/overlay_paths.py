"""Cross-host pod-to-pod datapaths: podnet's host-gw, vxlan and udp backends against the
underlay and against a VXLAN path hand-built with `ip` commands, all in one run.

What is compared (five paths, all present at the same time, each between two hosts):
  underlay     host h1 -> host h2 of the host-gw lab, through the lab's switch namespace
  host-gw      pod -> pod in a podnet lab (2 hosts x 1 pod, backend host-gw)
  vxlan        pod -> pod in a podnet lab (backend vxlan)
  hand vxlan   pod -> pod over VXLAN built with `ip` in namespaces of its own, flannel-style
               as ../shared/FACTS.md describes: two hosts on a bridge "switch", a cni0-like
               bridge per host, pods behind it, VXLAN devices (VNI 1, port 8472, nolearning)
               with static neighbour, FDB entries and onlink routes, device and pod MTU 1450
  udp          pod -> pod in a podnet lab (backend udp: TUN + the userspace forwarder)
Every lab is a real podnet lab (agents, store, pods attached through the CNI shim).
With --with-references three more hand-built paths run in the same rounds, to tell
podnet's overhead from the design's: hand-hostgw (cni0-like bridges and host routes, the
shape of podnet's host-gw), hand-routed (no bridge, Calico style: a /32 route per pod
veth, pods route via 169.254.1.1) and hand-vxlan-nocsum (hand-vxlan with `noudpcsum`).

How: an iperf3 server and a sockperf server (pinned to CPU 0) run at each path's far end.
Each round measures, for every path in turn, TCP throughput with `iperf3 -J` (1 stream,
then 4 streams) and TCP request/response latency with `sockperf ping-pong --tcp`, both ends
pinned to CPU 0 (FACTS.md: unpinned figures are bimodal on this VM); sockperf reports
half the round trip, p50 and p99. The order of the paths rotates (and flips) every round,
so no path always runs first or last on a noisy shared machine. It prints per-round
figures, medians, ratios of medians (with the range of the per-round ratios) against the
issue's bars, then the settings in which podnet's vxlan path differs from the hand-built
one (`ip -d -j link`, offloads through pyroute2's ethtool, `tc -j qdisc`, per-interface
and bridge-netfilter sysctls, nftables rules, the peer route, neighbour and FDB entries),
and the load average. Exit status 1 if a must is missed.

Bars (issue 3): must host-gw >= 0.85x underlay, podnet vxlan >= 0.95x hand-built VXLAN,
udp >= 0.2x vxlan throughput; goals host-gw >= 0.95x underlay, udp >= 0.4x vxlan. They
apply to the ratio of the 1-stream medians (the issue's reference figures are 1 stream);
4-stream ratios are shown against the same bars for information.

Every namespace (the labs' and the hand-built ones) starts with one prefix (`pnb` + 4
hex) and is removed at the end, also on failure; servers are stopped by PID.

    python3 benchmarks/overlay_paths.py --seconds 10 --rounds 5 [--with-references]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import labbench as lb
from benchlib import flatten

from podnet.kernel import netns  # after labbench, which puts src/ on sys.path
from podnet.lab import Lab, Topo

IPERF_PORT = 5201
SOCKPERF_PORT = 11111
DEFAULT_PATHS = ("underlay", "host-gw", "vxlan", "hand-vxlan", "udp")
EXTRA_PATHS = ("hand-hostgw", "hand-routed", "hand-vxlan-nocsum")  # references, on request
PATH_KEYS = ("underlay", "hand-hostgw", "hand-routed", "host-gw", "vxlan", "hand-vxlan",
             "hand-vxlan-nocsum", "udp")
METRICS = ("tput1", "tput4", "p50", "p99")
HIGHER_IS_BETTER = {"tput1": True, "tput4": True, "p50": False, "p99": False}
METRIC_LABEL = {"tput1": "Gbit/s 1 stream", "tput4": "Gbit/s 4 streams",
                "p50": "RR p50 us", "p99": "RR p99 us"}

# (numerator, denominator, must, goal) on throughput; latency ratios are only reported.
BARS = [("host-gw", "underlay", 0.85, 0.95), ("vxlan", "hand-vxlan", 0.95, None),
        ("udp", "vxlan", 0.2, 0.4)]
# Reference ratios (no bar) when the extra paths run.
INFO = [("hand-hostgw", "underlay"), ("hand-routed", "underlay"), ("host-gw", "hand-hostgw"),
        ("hand-vxlan-nocsum", "hand-vxlan"), ("vxlan", "hand-vxlan-nocsum")]

# Hand-built VXLAN: the same underlay addresses and MACs as a lab (it has its own
# namespaces, so nothing collides), pod subnets 10.244.1.0/24 and 10.244.2.0/24.
HB_VXLAN_DEV = "flannel.1"
HB_BRIDGE = "cni0"
HB_MTU = 1450
HB_HOSTS = [
    # (underlay ip, uplink mac, pod subnet third octet, vtep mac)
    ("172.30.1.11", "02:50:ac:1e:01:0b", 1, "02:0a:f4:01:00:01"),
    ("172.30.1.12", "02:50:ac:1e:01:0c", 2, "02:0a:f4:02:00:01"),
]


@dataclass
class Path:
    key: str
    what: str
    client_ns: str
    server_ns: str
    server_ip: str
    mtu: int
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    retrans: dict[str, list[int]] = field(default_factory=lambda: {"tput1": [], "tput4": []})


# -- building ------------------------------------------------------------------------------
def pod_mtu(ns: str) -> int:
    out = json.loads(lb.sh(ns, "ip -j link show dev eth0") or "[]")
    return int(out[0]["mtu"]) if out else 0


def lab_path(key: str, lab: Lab) -> Path:
    a, b = lab.pods[0], lab.pods[1]
    assert b.ip is not None
    return Path(key, f"lab {lab.name}: {a.name} -> {b.name} ({lab.backend})",
                lab.netns_of(a.name), lab.netns_of(b.name), b.ip, pod_mtu(lab.netns_of(a.name)))


def underlay_path(lab: Lab) -> Path:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    return Path("underlay", f"lab {lab.name}: host {h1.name} -> host {h2.name} via "
                f"{lab.netns_of('sw')}", h1.netns, h2.netns, h2.ip, 1500)


HAND_TAGS = {"hand-vxlan": "hb", "hand-vxlan-nocsum": "hn", "hand-hostgw": "hh",
             "hand-routed": "hr"}
ROUTED_GW = "169.254.1.1"  # the pods' next hop on routed (Calico-style) paths


def hand_names(pfx: str, key: str = "hand-vxlan") -> dict[str, str]:
    base = f"{pfx}{HAND_TAGS[key]}"
    return {"sw": f"{base}-sw", "h1": f"{base}-h1", "h2": f"{base}-h2",
            "h1-p1": f"{base}-h1-p1", "h2-p1": f"{base}-h2-p1"}


def build_hand(pfx: str, key: str) -> Path:
    """Two hosts on a switch and a pod on each, built with `ip` commands:
    hand-vxlan         flannel-style VXLAN between cni0-like bridges (kernel defaults)
    hand-vxlan-nocsum  the same with `noudpcsum` on the VXLAN devices (what flannel sets)
    hand-hostgw        cni0-like bridges, a route to the peer's pod subnet via the peer host
    hand-routed        no bridge (Calico style): a /32 route per pod veth on the host, the
                       pod's default route via 169.254.1.1, a permanent neighbour entry
                       for it to the host veth's MAC; host routes as hand-hostgw"""
    n = hand_names(pfx, key)
    vxlan = key.startswith("hand-vxlan")
    mtu = HB_MTU if vxlan else 1500
    lb.ip_batch(None, [f"netns add {ns}" for ns in n.values()])
    lb.ip_batch(n["sw"], ["link set lo up", "link add br0 type bridge", "link set br0 up"])
    for i, (ip, mac, octet, vmac) in enumerate(HB_HOSTS, start=1):
        host, pod = n[f"h{i}"], n[f"h{i}-p1"]
        pip, pmac, poctet, pvmac = HB_HOSTS[2 - i]
        lines = [
            "link set lo up",
            f"link add eth0 address {mac} type veth peer name h{i} netns {n['sw']}",
            "link set eth0 up",
            f"addr add {ip}/24 dev eth0",
            f"neigh replace {pip} lladdr {pmac} dev eth0 nud permanent",
            f"link add veth0 mtu {mtu} type veth peer name eth0 mtu {mtu} netns {pod}",
        ]
        if vxlan:
            csum = " noudpcsum" if key == "hand-vxlan-nocsum" else ""
            lines += [
                f"link add {HB_VXLAN_DEV} address {vmac} type vxlan id 1 local {ip} dev eth0 "
                f"dstport 8472 nolearning{csum}",
                f"link set {HB_VXLAN_DEV} mtu {HB_MTU} up",
                f"addr add 10.244.{octet}.0/32 dev {HB_VXLAN_DEV}",
                f"neigh replace 10.244.{poctet}.0 lladdr {pvmac} dev {HB_VXLAN_DEV} "
                "nud permanent",
                f"route replace 10.244.{poctet}.0/24 via 10.244.{poctet}.0 dev {HB_VXLAN_DEV} "
                "onlink",
            ]
        else:
            lines.append(f"route replace 10.244.{poctet}.0/24 via {pip} dev eth0")
        if key == "hand-routed":
            lines += ["link set veth0 up",
                      f"route replace 10.244.{octet}.2/32 dev veth0 scope link"]
        else:
            lines += [f"link add {HB_BRIDGE} mtu {mtu} type bridge", f"link set {HB_BRIDGE} up",
                      f"addr add 10.244.{octet}.1/24 dev {HB_BRIDGE}",
                      f"link set veth0 master {HB_BRIDGE} up"]
        lb.ip_batch(host, lines)
        if vxlan:
            lb.sh(None, f"bridge -n {host} fdb append {pvmac} dev {HB_VXLAN_DEV} dst {pip} "
                  "self permanent")
        lb.sh(host, "echo 1 > /proc/sys/net/ipv4/ip_forward")
        lb.ip_batch(n["sw"], [f"link set h{i} master br0 up"])
        if key == "hand-routed":
            vmac_host = json.loads(lb.sh(host, "ip -j link show dev veth0"))[0]["address"]
            pod_lines = [f"addr add 10.244.{octet}.2/32 dev eth0", "link set eth0 up",
                         f"neigh replace {ROUTED_GW} lladdr {vmac_host} dev eth0 nud permanent",
                         f"route add {ROUTED_GW} dev eth0 scope link",
                         f"route add default via {ROUTED_GW} dev eth0"]
        else:
            pod_lines = [f"addr add 10.244.{octet}.2/24 dev eth0", "link set eth0 up",
                         f"route add default via 10.244.{octet}.1"]
        lb.ip_batch(pod, ["link set lo up", *pod_lines])
    return Path(key, f"hand-built: {n['h1-p1']} -> {n['h2-p1']} (ip commands)",
                n["h1-p1"], n["h2-p1"], "10.244.2.2", pod_mtu(n["h1-p1"]))


# -- measuring -----------------------------------------------------------------------------
def start_servers(servers: lb.Servers, paths: list[Path]) -> None:
    for p in paths:
        servers.start(p.server_ns, "iperf3", "-s", "-B", p.server_ip, "-p", str(IPERF_PORT))
        servers.start(p.server_ns, "taskset", "-c", "0", "sockperf", "server", "--tcp", "-i",
                      p.server_ip, "-p", str(SOCKPERF_PORT))
    time.sleep(1.0)
    servers.check()


def iperf(p: Path, streams: int, seconds: int) -> tuple[float, int]:
    proc = subprocess.run(
        lb.nsrun(p.client_ns, "iperf3", "-c", p.server_ip, "-p", str(IPERF_PORT), "-J",
                 "-t", str(seconds), "-P", str(streams)),
        capture_output=True, text=True, timeout=seconds + 60)
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"iperf3 {p.key}: {proc.stderr.strip()[-300:]}") from exc
    if "error" in data:
        raise RuntimeError(f"iperf3 {p.key}: {data['error']}")
    end = data["end"]
    return (end["sum_received"]["bits_per_second"] / 1e9,
            int(end["sum_sent"].get("retransmits", 0)))


def sockperf(p: Path, seconds: int) -> tuple[float, float]:
    proc = subprocess.run(
        lb.nsrun(p.client_ns, "taskset", "-c", "0", "sockperf", "ping-pong", "--tcp", "-i",
                 p.server_ip, "-p", str(SOCKPERF_PORT), "-t", str(seconds)),
        capture_output=True, text=True, timeout=seconds + 60)
    text = proc.stdout + proc.stderr
    p50 = re.search(r"percentile 50\.000 =\s*([\d.]+)", text)
    p99 = re.search(r"percentile 99\.000 =\s*([\d.]+)", text)
    if proc.returncode != 0 or not p50 or not p99:
        raise RuntimeError(f"sockperf {p.key} rc={proc.returncode}: {text.strip()[-400:]}")
    return float(p50.group(1)), float(p99.group(1))


def round_order(paths: list[Path], r: int) -> list[Path]:
    k = r % len(paths)
    order = paths[k:] + paths[:k]
    return order[::-1] if r % 2 else order


def run_rounds(paths: list[Path], rounds: int, seconds: int) -> list[list[str]]:
    orders = []
    for r in range(rounds):
        order = round_order(paths, r)
        orders.append([p.key for p in order])
        for streams, metric in ((1, "tput1"), (4, "tput4")):
            for p in order:
                gbps, retr = iperf(p, streams, seconds)
                p.values[metric].append(gbps)
                p.retrans[metric].append(retr)
        for p in order:
            p50, p99 = sockperf(p, seconds)
            p.values["p50"].append(p50)
            p.values["p99"].append(p99)
        lb.console.print(f"round {r + 1}/{rounds} done ({', '.join(orders[-1])}); "
                         f"load {lb.loadavg()}")
    return orders


# -- reporting -----------------------------------------------------------------------------
def ratios(num: Path, den: Path, metric: str) -> tuple[float, list[float]]:
    per_round = [a / b for a, b in zip(num.values[metric], den.values[metric], strict=True)
                 if b > 0]
    m_num, m_den = lb.median(num.values[metric]), lb.median(den.values[metric])
    return (m_num / m_den if m_den else math.nan), per_round


def report(paths: dict[str, Path], orders: list[list[str]]) -> bool:
    c = lb.console
    c.print(lb.table("Paths", ["path", "what", "pod MTU", "server"],
                     [[p.key, p.what, str(p.mtu), p.server_ip] for p in paths.values()]))
    rows = []
    for r, order in enumerate(orders):
        for i, key in enumerate(order):
            p = paths[key]
            rows.append([str(r + 1) if i == 0 else "", key,
                         lb.fmt(p.values["tput1"][r]), lb.fmt(p.values["tput4"][r]),
                         lb.fmt(p.values["p50"][r], 1), lb.fmt(p.values["p99"][r], 1),
                         f"{p.retrans['tput1'][r]}/{p.retrans['tput4'][r]}"])
    c.print(lb.table("Rounds, in the order run (sockperf latency is RTT/2, both ends on CPU 0)",
                     ["round", "path", "Gbit/s 1", "Gbit/s 4", "RR p50 us", "RR p99 us",
                      "retrans 1/4"], rows))
    c.print(lb.table(
        f"Medians of {len(orders)} rounds",
        ["path", "Gbit/s 1 stream", "Gbit/s 4 streams", "RR p50 us", "RR p99 us",
         "x underlay (1 stream)"],
        [[p.key, lb.fmt(lb.median(p.values["tput1"])), lb.fmt(lb.median(p.values["tput4"])),
          lb.fmt(lb.median(p.values["p50"]), 1), lb.fmt(lb.median(p.values["p99"]), 1),
          lb.fmt(ratios(p, paths["underlay"], "tput1")[0]) if "underlay" in paths else "-"]
         for p in paths.values()]))
    ok = True
    rows = []
    for num, den, must, goal in BARS:
        if num not in paths or den not in paths:
            continue
        for metric in METRICS:
            ratio, per_round = ratios(paths[num], paths[den], metric)
            spread = f"{min(per_round):.2f}-{max(per_round):.2f}" if per_round else "-"
            bar, result = "(lower is better)", ""
            if HIGHER_IS_BETTER[metric]:
                passed = ratio >= must
                bar = f">= {must}" + (f" (goal {goal})" if goal else "")
                result = lb.verdict(passed)
                if passed and goal is not None:
                    result += " goal " + ("met" if ratio >= goal else "[yellow]not met[/yellow]")
                if metric == "tput1":
                    ok &= passed
                else:
                    result += " (info)"
            rows.append([f"{num} / {den}", METRIC_LABEL[metric], lb.fmt(ratio),
                         lb.fmt(lb.median(per_round)), spread, bar, result])
    for num, den in INFO:
        if num not in paths or den not in paths:
            continue
        for metric in METRICS:
            ratio, per_round = ratios(paths[num], paths[den], metric)
            spread = f"{min(per_round):.2f}-{max(per_round):.2f}" if per_round else "-"
            rows.append([f"{num} / {den}", METRIC_LABEL[metric], lb.fmt(ratio),
                         lb.fmt(lb.median(per_round)), spread, "(reference)", ""])
    c.print(lb.table(
        "Ratios of medians (beside: the median and range of the per-round ratios). The bars "
        "apply to the ratio of medians on 1-stream "
        "figures (the issue's reference numbers are 1 stream); 4 streams are shown against "
        "the same bar for information",
        ["comparison", "metric", "ratio", "per-round median", "per-round range", "bar",
         "verdict"], rows))
    return ok


# -- settings comparison ---------------------------------------------------------------------
IDENTITY_KEYS = re.compile(
    r"(^|\.)(ifindex|ifname|address|broadcast|link|link_index|link_netnsid|master|"
    r"id|no|bridge_id|root_id|designated_root|designated_bridge|designated_port|"
    r"designated_cost|root_port|root_path_cost|port_id|port_no|[a-z_]*_timer|local|"
    r"parentbus|parentdev|perm_address|altnames|ifalias|stats64\..*|addr_info.*|"
    r"operstate|linkmode|group|flags)$"
)
NS_SYSCTLS = ["net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
              "net/bridge/bridge-nf-call-arptables", "net/ipv4/ip_forward",
              "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter",
              "net/ipv4/tcp_congestion_control", "net/core/default_qdisc"]





def sh_json(ns: str, cmd: str) -> Any:
    out = lb.sh(ns, cmd, check=False)
    try:
        return json.loads(out) if out.strip() else []
    except ValueError:
        return []


def offloads(ns: str, dev: str) -> dict[str, str]:
    """ethtool -k through pyroute2 (ethtool(8) is not installed here)."""
    from pyroute2.ethtool import Ethtool

    def read() -> dict[str, str]:
        eth = Ethtool()
        try:
            feats = eth.get_features(dev).features
            return {k: ("on" if f.enable else "off") for k, f in feats.items() if k}
        finally:
            eth.close()

    try:
        return dict(netns.run_in(ns, read))
    except Exception as exc:  # noqa: BLE001 - a comparison row, not a failure
        return {"error": str(exc)}


def dev_settings(ns: str, dev: str) -> dict[str, str]:
    link = sh_json(ns, f"ip -d -j link show dev {dev}")
    out = {f"link.{k}": v for k, v in flatten(link[0] if link else {}).items()
           if not IDENTITY_KEYS.search(k)}
    qdisc = sh_json(ns, f"tc -j qdisc show dev {dev}")
    out.update({f"qdisc.{k}": v for k, v in flatten(qdisc).items()
                if not k.endswith("handle") and "parent" not in k})
    text = lb.sh(ns, f"grep -H . /proc/sys/net/ipv4/conf/{dev}/* 2>/dev/null", check=False)
    for line in text.splitlines():
        path, _, value = line.partition(":")
        out[f"sysctl.{path.rsplit('/', 1)[-1]}"] = value
    out.update({f"offload.{k}": v for k, v in offloads(ns, dev).items()})
    return out


def ns_settings(ns: str) -> dict[str, str]:
    out = {}
    for name in NS_SYSCTLS:
        value = lb.sh(ns, f"cat /proc/sys/{name} 2>/dev/null", check=False).strip()
        out[name.replace("/", ".")] = value or "(absent)"
    rules = lb.sh(ns, "nft list ruleset 2>/dev/null | grep -c . || true", check=False)
    out["nftables ruleset lines"] = rules.strip() or "0"
    return out


def first_port(ns: str, bridge: str) -> str:
    links = sh_json(ns, f"ip -j link show master {bridge}")
    return links[0]["ifname"] if links else "?"


@dataclass
class Side:
    host: str
    pod: str
    sw: str
    sw_port: str
    vxlan: str
    bridge: str
    peer_subnet: str


def side_settings(s: Side) -> dict[str, dict[str, str]]:
    roles: dict[str, tuple[str, str]] = {
        "switch port": (s.sw, s.sw_port), "host eth0": (s.host, "eth0"),
        "vxlan device": (s.host, s.vxlan), "pod bridge": (s.host, s.bridge),
        "host pod veth": (s.host, first_port(s.host, s.bridge)), "pod eth0": (s.pod, "eth0"),
    }
    out = {role: dev_settings(ns, dev) for role, (ns, dev) in roles.items()}
    out["host namespace"] = ns_settings(s.host)
    out["pod namespace"] = ns_settings(s.pod)
    route = sh_json(s.host, f"ip -d -j route show {s.peer_subnet}")
    out["route to peer subnet"] = {k: v for k, v in flatten(route).items()
                                   if not re.search(r"(dst|gateway|dev|prefsrc)$", k)}
    neigh = sh_json(s.host, f"ip -j neigh show dev {s.vxlan}")
    out["vxlan neighbour"] = {k: v for k, v in flatten(neigh).items()
                              if not re.search(r"(dst|lladdr)$", k)}
    fdb = [e for e in sh_json(s.host, f"bridge -j fdb show dev {s.vxlan}") if e.get("dst")]
    out["vxlan fdb"] = {k: v for k, v in flatten(fdb).items()
                        if not re.search(r"(mac|dst|ifname)$", k)}
    pod_routes = sh_json(s.pod, "ip -d -j route show default")
    out["pod default route"] = {k: v for k, v in flatten(pod_routes).items()
                                if not re.search(r"(gateway|dev|prefsrc)$", k)}
    return out


def compare(podnet_side: Side, hand_side: Side) -> list[list[str]]:
    a, b = side_settings(podnet_side), side_settings(hand_side)
    rows = []
    for role in a:
        for key in sorted(set(a[role]) | set(b.get(role, {}))):
            va, vb = a[role].get(key, "-"), b.get(role, {}).get(key, "-")
            if va != vb:
                rows.append([role, key, va, vb])
    return rows


def vxlan_sides(vx: Lab, pfx: str) -> tuple[Side, Side]:
    h1, h2 = vx.hosts[0], vx.hosts[1]
    assert h2.subnet is not None
    links = sh_json(h1.netns, "ip -j link show type vxlan")
    podnet_side = Side(h1.netns, vx.netns_of(vx.pods[0].name), vx.netns_of("sw"), h1.name,
                       links[0]["ifname"] if links else "?", first_bridge(h1.netns),
                       h2.subnet)
    n = hand_names(pfx)
    hand_side = Side(n["h1"], n["h1-p1"], n["sw"], "h1", HB_VXLAN_DEV, HB_BRIDGE,
                     "10.244.2.0/24")
    return podnet_side, hand_side


def first_bridge(ns: str) -> str:
    links = sh_json(ns, "ip -j link show type bridge")
    return links[0]["ifname"] if links else "?"


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="seconds per iperf3/sockperf run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                    help=f"comma-separated subset of {', '.join(PATH_KEYS)}")
    ap.add_argument("--with-references", action="store_true",
                    help=f"also run the hand-built reference paths {', '.join(EXTRA_PATHS)}")
    args = ap.parse_args()
    wanted = [k.strip() for k in args.paths.split(",") if k.strip()]
    if args.with_references:
        wanted += [k for k in EXTRA_PATHS if k not in wanted]
    unknown = set(wanted) - set(PATH_KEYS)
    if unknown or args.rounds < 1 or args.seconds < 1:
        ap.error(f"unknown paths {sorted(unknown)}" if unknown else "rounds/seconds >= 1")

    pfx = lb.new_prefix()
    lb.console.print(f"prefix {pfx}; {lb.machine_line()}")
    with lb.owned_namespaces(pfx), contextlib.ExitStack() as stack:
        paths, vx = build_paths(stack, pfx, wanted)
        servers = lb.Servers()
        stack.callback(servers.stop_all)
        start_servers(servers, list(paths.values()))
        for p in paths.values():  # warm-up, and a clear error if a path is broken
            iperf(p, 1, 1)
        load_before = lb.loadavg()
        orders = run_rounds(list(paths.values()), args.rounds, args.seconds)
        load_after = lb.loadavg()
        ok = report(paths, orders)
        if vx is not None and "hand-vxlan" in paths:
            rows = compare(*vxlan_sides(vx, pfx))
            lb.console.print(lb.table(
                "Settings that differ: podnet vxlan vs hand-built vxlan (client side: "
                "switch port, host h1, pod h1-p1)",
                ["role", "setting", "podnet vxlan", "hand-built"], rows or [["(none)"] * 4]))
        lb.console.print(f"load average before rounds: {load_before}; after: {load_after}")
        lb.console.print("issue 3 musts: " + ("[green]all met[/green]" if ok
                                              else "[red]at least one missed[/red]"))
    return 0 if ok else 1


def build_paths(stack: contextlib.ExitStack, pfx: str, wanted: list[str]
                ) -> tuple[dict[str, Path], Lab | None]:
    """Bring up the labs and the hand-built path that the wanted paths need."""
    clock = lb.Stopwatch()
    built: dict[str, Path] = {}
    vx: Lab | None = None
    labs: dict[str, tuple[str, str]] = {"host-gw": ("host-gw", "hg"), "vxlan": ("vxlan", "vx"),
                                        "udp": ("udp", "ud")}
    need = {k for k in wanted if k in labs}
    if "underlay" in wanted:
        need.add("host-gw")
    for key in ("host-gw", "vxlan", "udp"):
        if key not in need:
            continue
        backend, tag = labs[key]
        lab = stack.enter_context(Lab(Topo(hosts=2, pods_per_host=1), backend=backend,
                                      name=f"{pfx}{tag}"))
        if key == "host-gw" and "underlay" in wanted:
            built["underlay"] = underlay_path(lab)
        if key == "vxlan":
            vx = lab
        if key in wanted:
            built[key] = lab_path(key, lab)
    for key in HAND_TAGS:
        if key in wanted:
            stack.callback(lb.remove_namespaces, hand_names(pfx, key)["sw"][:-2])
            built[key] = build_hand(pfx, key)
    lb.console.print(f"labs and hand-built paths up in {clock():.1f} s")
    return {k: built[k] for k in PATH_KEYS if k in built}, vx




if __name__ == "__main__":
    raise SystemExit(main())
