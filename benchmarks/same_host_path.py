"""Same-host pod-to-pod datapath: podnet's bridge against the reference CNI bridge plugin.

What is compared: two pods attached through podnet's CNI shim (real agent running, the
podnet bridge driver) and two pods attached through /usr/lib/cni/bridge + host-local
(another bridge), both in one host namespace of the script's own, with equivalent
settings (gateway on the bridge, hairpin on, no masquerade, default MTU).

How: the script re-execs itself inside `<prefix>-host` (prefix `pnb` + 4 hex), attaches
the four pods the way a runtime does (plugin exec, environment + stdin), starts an
iperf3 server and a sockperf server in each side's second pod, then runs at least 5
rounds, alternating which side goes first: TCP throughput with `iperf3 -J`, one
stream, and TCP request/response latency with `sockperf ping-pong --tcp`, both ends
pinned to CPU 0 with taskset (sockperf reports half the round trip). It prints
per-round figures, medians and podnet/reference ratios against the issue's bars
(>= 0.95x throughput, <= 1.05x latency; the exit status uses sockperf's median, as its
average swings with scheduler outliers on a shared machine; both are printed), and
the settings of both datapaths that differ (`ip -d -j link`, `tc -j qdisc`,
per-interface sysctls, offloads read through pyroute2's ethtool, pod routes).
`--simultaneous N` adds N rounds with both sides' iperf3 running at once: on a busy
machine that comparison is steadier, as outside load hits both sides alike.
Every namespace under the prefix is removed at the end, also on failure.

    python3 benchmarks/same_host_path.py --rounds 5 --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import benchlib as bl

PODNET_SUBNET = "10.96.0.0/24"
REF_SUBNET = "10.97.0.0/24"
NET_NAME = "pnpath"
REF_BRIDGE = "refbr1"
IPERF_PORT = 5201
PIN_CLIENT: list[str] = []  # --pin-iperf: client on CPU 0, server on CPU 1
PIN_SERVER: list[str] = []
SOCKPERF_PORT = 11111

# `ip -d -j link` keys that name or number an object (or are live counters/timers)
# rather than configure it.
IDENTITY_KEYS = re.compile(
    r"(^|\.)(ifindex|ifname|address|broadcast|link|link_index|link_netnsid|master|"
    r"id|no|bridge_id|root_id|designated_root|designated_bridge|designated_port|"
    r"designated_cost|root_port|root_path_cost|port_id|port_no|[a-z_]*_timer|"
    r"parentbus|parentdev|perm_address|altnames|ifalias|stats64\..*|addr_info.*)$"
)


@dataclass
class Side:
    name: str
    binary: str
    conf: dict
    cni_path: str
    pods: list[str]
    bridge: str
    ips: list[str] = field(default_factory=list)
    host_ifs: list[str] = field(default_factory=list)
    gbps: list[float] = field(default_factory=list)
    retrans: list[int] = field(default_factory=list)
    lat_avg: list[float] = field(default_factory=list)
    lat_p50: list[float] = field(default_factory=list)

    def attach(self) -> None:
        for i, pod in enumerate(self.pods):
            env = bl.cni_env("ADD", f"{self.name}-c{i}", f"/run/netns/{pod}", self.cni_path)
            res = bl.checked(bl.exec_plugin(self.binary, env, json.dumps(self.conf).encode()),
                             f"{self.name} ADD")
            out = res.json()
            self.ips.append(out["ips"][0]["address"].split("/")[0])
            self.host_ifs += [i["name"] for i in out["interfaces"]
                              if "sandbox" not in i and i["name"] != self.bridge]


def nsrun(pod: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{pod}", *argv]


@contextlib.contextmanager
def servers(sides: list[Side]) -> Iterator[None]:
    procs: list[subprocess.Popen] = []
    try:
        for s in sides:
            pod, ip = s.pods[1], s.ips[1]
            procs.append(subprocess.Popen(
                nsrun(pod, *PIN_SERVER, "iperf3", "-s", "-B", ip, "-p", str(IPERF_PORT)),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen(
                nsrun(pod, "taskset", "-c", "0", "sockperf", "server", "--tcp", "-i", ip,
                      "-p", str(SOCKPERF_PORT)),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"server {p.args} exited rc={p.returncode}")
        yield
    finally:
        for p in procs:
            bl.stop_process(p)


def iperf(side: Side, seconds: int) -> tuple[float, int]:
    proc = subprocess.run(
        nsrun(side.pods[0], *PIN_CLIENT, "iperf3", "-c", side.ips[1], "-p", str(IPERF_PORT), "-J",
              "-t", str(seconds), "-P", "1"),
        capture_output=True, text=True, timeout=seconds + 60)
    data = json.loads(proc.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 {side.name}: {data['error']}")
    end = data["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, int(end["sum_sent"].get("retransmits", 0))


def sockperf(side: Side, seconds: int) -> tuple[float, float]:
    proc = subprocess.run(
        nsrun(side.pods[0], "taskset", "-c", "0", "sockperf", "ping-pong", "--tcp", "-i",
              side.ips[1], "-p", str(SOCKPERF_PORT), "-t", str(seconds)),
        capture_output=True, text=True, timeout=seconds + 60)
    text = proc.stdout + proc.stderr
    avg = re.search(r"avg-latency=([\d.]+)", text)
    p50 = re.search(r"percentile 50\.000 =\s*([\d.]+)", text)
    if proc.returncode != 0 or not avg or not p50:
        raise RuntimeError(f"sockperf {side.name} rc={proc.returncode}: {text[-500:]}")
    return float(avg.group(1)), float(p50.group(1))


def simultaneous(sides: list[Side], rounds: int, seconds: int) -> list[list[str]]:
    """Both sides' iperf3 at the same time: outside load hits both alike, so the ratio of
    the two throughputs compares per-byte cost even on a busy machine."""
    rows = []
    for r in range(rounds):
        procs = [subprocess.Popen(
            nsrun(s.pods[0], "iperf3", "-c", s.ips[1], "-p", str(IPERF_PORT), "-J", "-t",
                  str(seconds), "-P", "1"), stdout=subprocess.PIPE, text=True) for s in sides]
        gbps = []
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            gbps.append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9)
        rows.append([str(r + 1), f"{gbps[0]:.2f}", f"{gbps[1]:.2f}", f"{gbps[0] / gbps[1]:.3f}x"])
    ratios = [float(row[3][:-1]) for row in rows]
    rows.append(["median", "", "", f"{bl.median(ratios):.3f}x"])
    return rows


# -- settings comparison ----------------------------------------------------------------------



def sh_json(argv: list[str]) -> Any:
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def sysctls(pod: str | None, dev: str) -> dict[str, str]:
    cmd = f"grep -H . /proc/sys/net/ipv4/conf/{dev}/* /proc/sys/net/ipv6/conf/{dev}/* 2>/dev/null"
    argv = nsrun(pod, "sh", "-c", cmd) if pod else ["sh", "-c", cmd]
    out: dict[str, str] = {}
    for line in subprocess.run(argv, capture_output=True, text=True).stdout.splitlines():
        path, _, value = line.partition(":")
        parts = path.split("/")
        out[f"{parts[4]}.{parts[-1]}"] = value
    return out


def settings(side: Side) -> dict[str, dict[str, str]]:
    """Comparable settings per role: bridge, host veth, pod eth0 (+ qdisc, sysctls, routes)."""
    pod = side.pods[0]
    roles = {"bridge": (None, side.bridge), "host veth": (None, side.host_ifs[0]),
             "pod eth0": (pod, "eth0")}
    out: dict[str, dict[str, str]] = {}
    for role, (ns, dev) in roles.items():
        nsargs = ["-n", ns] if ns else []
        link = sh_json(["ip", *nsargs, "-d", "-j", "link", "show", "dev", dev])
        values = {f"link.{k}": v for k, v in bl.flatten(link[0] if link else {}).items()
                  if not IDENTITY_KEYS.search(k)}
        qdisc = sh_json(["tc", *nsargs, "-j", "qdisc", "show", "dev", dev])
        values.update({f"qdisc.{k}": v for k, v in bl.flatten(qdisc).items()
                       if not k.endswith("handle") and "parent" not in k})
        values.update({f"sysctl.{k}": v for k, v in sysctls(ns, dev).items()})
        values.update({f"offload.{k}": v for k, v in offloads(ns, dev).items()})
        out[role] = values
    routes: dict[str, str] = {}
    for r in sh_json(["ip", "-n", pod, "-j", "route", "show"]):
        which = "default" if r.get("dst") == "default" else "subnet"
        routes.update({f"{which}.{k}": v for k, v in bl.flatten(r).items()
                       if k not in ("dst", "gateway", "prefsrc", "dev")})
    out["pod routes"] = routes
    return out


def offloads(pod: str | None, dev: str) -> dict[str, str]:
    """ethtool -k equivalent through pyroute2 (ethtool(8) is not installed here)."""
    from pyroute2.ethtool import Ethtool

    def read() -> dict[str, str]:
        eth = Ethtool()
        try:
            feats = eth.get_features(dev).features
            return {k: ("on" if f.enable else "off") for k, f in feats.items() if k}
        finally:
            eth.close()

    if pod is None:
        return read()
    from podnet.kernel import netns

    return dict(netns.run_in(pod, read))


def compare_settings(podnet: Side, ref: Side) -> list[list[str]]:
    a, b = settings(podnet), settings(ref)
    rows = []
    for role in a:
        keys = sorted(set(a[role]) | set(b[role]))
        for key in keys:
            va, vb = a[role].get(key, "-"), b[role].get(key, "-")
            if va != vb:
                rows.append([role, key, va, vb])
    return rows


def host_filters() -> list[list[str]]:
    """Packet filter rules in the host namespace (bridged traffic meets them: bridge-nf)."""
    rows = []
    for argv in (["nft", "list", "ruleset"], ["iptables-legacy-save"], ["iptables-nft-save"]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True).stdout
        except FileNotFoundError:
            continue
        rules = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(("#", "*",
                 ":", "COMMIT", "table", "}", "chain", "type "))]
        rows.append([" ".join(argv), f"{len(rules)} rule lines"])
    return rows


def host_sysctls() -> list[list[str]]:
    names = ["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables",
             "net.bridge.bridge-nf-call-ip6tables", "net.core.default_qdisc"]
    rows = []
    for name in names:
        try:
            with open("/proc/sys/" + name.replace(".", "/")) as fh:
                rows.append([name, fh.read().strip()])
        except OSError as exc:
            rows.append([name, f"({exc.strerror})"])
    return rows


# -- main ----------------------------------------------------------------------------------------
def inner(args: argparse.Namespace) -> int:
    from podnet.install import install_cni

    pfx = bl.prefix()
    with tempfile.TemporaryDirectory(prefix=f"{pfx}-") as tmp:
        agent = bl.Agent(os.path.join(tmp, "podnet.db"), os.path.join(tmp, "agent.sock"),
                         os.path.join(tmp, "agent.log")).start()
        try:
            plugin = install_cni(os.path.join(tmp, "bin"))
            podnet = Side(
                "podnet", plugin,
                {"cniVersion": "1.0.0", "name": NET_NAME, "type": "podnet-cni",
                 "subnet": PODNET_SUBNET, "agentSocket": agent.socket},
                f"{os.path.dirname(plugin)}:{bl.REF_PLUGINS}", [f"{pfx}-pa1", f"{pfx}-pa2"],
                "pnbr-" + NET_NAME)
            ref = Side(
                "reference", os.path.join(bl.REF_PLUGINS, "bridge"),
                {"cniVersion": "1.0.0", "name": "refpath", "type": "bridge",
                 "bridge": REF_BRIDGE, "isGateway": True, "ipMasq": False,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "subnet": REF_SUBNET,
                          "dataDir": os.path.join(tmp, "host-local")}},
                bl.REF_PLUGINS, [f"{pfx}-pr1", f"{pfx}-pr2"], REF_BRIDGE)
            sides = [podnet, ref]
            bl.create_netns([p for s in sides for p in s.pods])
            for s in sides:
                s.attach()
            return measure(args, sides)
        finally:
            agent.stop()


def measure(args: argparse.Namespace, sides: list[Side]) -> int:
    podnet, ref = sides
    bl.console.print(
        f"[bold]same-host pod-to-pod path[/bold] prefix {bl.prefix()}: "
        f"podnet {podnet.ips[0]} -> {podnet.ips[1]} via {podnet.bridge}, "
        f"reference {ref.ips[0]} -> {ref.ips[1]} via {ref.bridge}; "
        f"{args.rounds} rounds x {args.seconds}s, iperf3 "
        f"{'pinned 0/1' if PIN_CLIENT else 'unpinned'}, load {os.getloadavg()[0]:.2f}")
    with servers(sides):
        for s in sides:  # warm-up: ARP, caches, CPU frequency
            iperf(s, 1)
            sockperf(s, 1)
        rows = []
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                gbps, retr = iperf(s, args.seconds)
                s.gbps.append(gbps)
                s.retrans.append(retr)
            for s in order:
                avg, p50 = sockperf(s, args.seconds)
                s.lat_avg.append(avg)
                s.lat_p50.append(p50)
            rows.append([str(r + 1), " then ".join(s.name for s in order),
                         f"{podnet.gbps[-1]:.2f}", f"{ref.gbps[-1]:.2f}",
                         f"{podnet.gbps[-1] / ref.gbps[-1]:.2f}x",
                         f"{podnet.lat_avg[-1]:.2f}", f"{ref.lat_avg[-1]:.2f}",
                         f"{podnet.lat_avg[-1] / ref.lat_avg[-1]:.2f}x"])
        sim = simultaneous(sides, args.simultaneous, args.seconds) if args.simultaneous else []
    bl.console.print(bl.table(
        "Rounds (throughput Gbit/s, 1 stream; sockperf avg latency us, RTT/2, CPU 0)",
        ["round", "order", "podnet Gb/s", "ref Gb/s", "ratio", "podnet us", "ref us",
         "ratio"], rows))

    med = {s.name: (bl.median(s.gbps), bl.median(s.lat_avg), bl.median(s.lat_p50),
                    bl.median([float(x) for x in s.retrans])) for s in sides}
    tput = med["podnet"][0] / med["reference"][0]
    lat = med["podnet"][1] / med["reference"][1]
    lat50 = med["podnet"][2] / med["reference"][2]
    round_tput = bl.median([a / b for a, b in zip(podnet.gbps, ref.gbps, strict=True)])
    round_lat = bl.median([a / b for a, b in zip(podnet.lat_avg, ref.lat_avg, strict=True)])
    round_lat50 = bl.median([a / b for a, b in zip(podnet.lat_p50, ref.lat_p50, strict=True)])
    bl.console.print(bl.table(
        f"Medians of {args.rounds} rounds",
        ["side", "Gbit/s", "retransmits", "latency avg us", "latency p50 us"],
        [[n, f"{v[0]:.2f}", f"{v[3]:.0f}", f"{v[1]:.2f}", f"{v[2]:.2f}"]
         for n, v in med.items()]
        + [["ratio podnet/reference (of medians)", f"{tput:.3f}x", "", f"{lat:.3f}x",
            f"{lat50:.3f}x"],
           ["median of per-round ratios", f"{round_tput:.3f}x", "", f"{round_lat:.3f}x",
            f"{round_lat50:.3f}x"]]))
    bl.console.print(bl.table(
        "Issue's bars", ["criterion", "bound", "measured", "result"],
        [["throughput podnet/reference", ">= 0.95x", f"{tput:.3f}x", bl.verdict(tput >= 0.95)],
         ["latency p50 podnet/reference", "<= 1.05x", f"{lat50:.3f}x",
          bl.verdict(lat50 <= 1.05)],
         ["latency avg podnet/reference (outlier-sensitive)", "<= 1.05x", f"{lat:.3f}x",
          bl.verdict(lat <= 1.05)]]))

    if sim:
        bl.console.print(bl.table(
            "Both sides' iperf3 at once (sharing the CPUs; external load hits both alike)",
            ["round", "podnet Gb/s", "ref Gb/s", "ratio"], sim))
    diffs = compare_settings(podnet, ref)
    bl.console.print(bl.table(
        "Datapath settings that differ (ip -d -j link, tc -j qdisc, sysctls, pod routes)",
        ["object", "setting", "podnet", "reference"],
        diffs or [["-", "(no differences)", "", ""]]))
    bl.console.print(bl.table("Host namespace (shared by both sides)", ["setting", "value"],
                              host_sysctls() + host_filters()))
    return 0 if tput >= 0.95 and lat50 <= 1.05 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (>= 5)")
    ap.add_argument("--seconds", type=int, default=10, help="seconds per iperf3/sockperf run")
    ap.add_argument("--simultaneous", type=int, default=0, metavar="N",
                    help="also N rounds of both sides' iperf3 running at once")
    ap.add_argument("--pin-iperf", action="store_true",
                    help="pin the iperf3 client to CPU 0 and the server to CPU 1")
    args = ap.parse_args()
    if args.pin_iperf:
        PIN_CLIENT[:] = ["taskset", "-c", "0"]
        PIN_SERVER[:] = ["taskset", "-c", "1"]
    if args.rounds < 1:
        ap.error("--rounds must be positive")
    return bl.run_in_host_namespace(lambda: inner(args))


if __name__ == "__main__":
    sys.exit(main())
