"""Pod-to-pod TCP throughput across two hosts: podnet's udp forwarder against kernel VXLAN.

What is compared, in one run on one topology: two host namespaces joined by a veth
"underlay" (MTU 1500), each with two pods behind it. One pod pair talks through a
hand-built flannel-style VXLAN (VNI 1, device address <subnet>.0/32, onlink route,
permanent neighbour + FDB entries, device and pod MTU 1450); the other pair through
podnet's udp backend (a TUN device with offloads set up by podnet.kernel.tun, one
forwarder per host started by podnet.udp.control, TUN and pod MTU 1472). Only the
overlay differs: same hosts, same underlay, same kernel.

How: iperf3 servers run in the second pod of each pair; each round runs `iperf3 -J`
for 1 and 4 streams through both paths, alternating which path goes first. It prints
per-round figures, medians, the udp/vxlan ratio against the issue's bars (1 stream:
must >= 0.2x, goal >= 0.4x), the forwarders' CPU seconds per GB moved, their mean
super-packet size, and the load average (the machine is shared: trust the ratio).
Every namespace under the prefix (`pnb` + 4 hex) is removed at the end, also on failure.

    python3 benchmarks/udp_tunnel.py --rounds 5 --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import benchlib as bl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "src"))
from podnet.kernel import tun  # noqa: E402
from podnet.udp import control  # noqa: E402

UNDER_MTU = 1500
UDP_MTU = tun.tun_mtu(UNDER_MTU)  # 1472
VXLAN_MTU = UNDER_MTU - 50  # 1450
PORT = 8285
UNDER = {1: "192.168.251.1", 2: "192.168.251.2"}
UDP_NET = "10.98"
VX_NET = "10.97"
MUST, GOAL = 0.2, 0.4


def ip(netns: str | None, *lines: str) -> None:
    """`ip` commands, in one `ip -batch` process per namespace; fails on any error."""
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {netns}: {proc.stderr.strip()}")


class Topology:
    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self.tun = f"{prefix}-t"
        self.vx = f"{prefix}-vx"
        self.servers: list[subprocess.Popen] = []

    def host(self, i: int) -> str:
        return f"{self.p}-h{i}"

    def pod(self, kind: str, i: int) -> str:
        return f"{self.p}-{kind}{i}"

    def ctl(self, i: int) -> str:
        return f"/tmp/{self.p}-h{i}.ctl"

    def build(self) -> None:
        p = self.p
        names = [self.host(1), self.host(2)] + [self.pod(k, i) for k in "ux" for i in (1, 2)]
        bl.create_netns(names)
        ip(None, f"link add {p}-und netns {self.host(1)} type veth peer name {p}-und "
                 f"netns {self.host(2)}")
        for i in (1, 2):
            h = self.host(i)
            lines = [f"addr add {UNDER[i]}/24 dev {p}-und", f"link set {p}-und up",
                     "link set lo up"]
            for kind, net, mtu in (("u", UDP_NET, UDP_MTU), ("x", VX_NET, VXLAN_MTU)):
                pod = self.pod(kind, i)
                ip(None, f"link add {p}-{kind} netns {h} type veth peer name eth0 netns {pod}")
                lines += [f"addr add {net}.{i}.1/24 dev {p}-{kind}",
                          f"link set {p}-{kind} mtu {mtu} up"]
                ip(pod, "link set lo up", f"link set eth0 mtu {mtu} up",
                   f"addr add {net}.{i}.2/24 dev eth0", f"route add default via {net}.{i}.1")
            lines += [f"link add {self.vx} type vxlan id 1 local {UNDER[i]} dev {p}-und "
                      "dstport 4789 nolearning",
                      f"link set {self.vx} mtu {VXLAN_MTU} up",
                      f"addr add {VX_NET}.{i}.0/32 dev {self.vx}"]
            ip(h, *lines)
            subprocess.run(["ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                           check=True)
        macs = {i: self._mac(self.host(i), self.vx) for i in (1, 2)}
        for i, o in ((1, 2), (2, 1)):
            ip(self.host(i),
               f"neigh replace {VX_NET}.{o}.0 lladdr {macs[o]} dev {self.vx} nud permanent",
               f"route replace {VX_NET}.{o}.0/24 via {VX_NET}.{o}.0 dev {self.vx} onlink")
            subprocess.run(["bridge", "-n", self.host(i), "fdb", "append", macs[o], "dev",
                            self.vx, "dst", UNDER[o]], check=True)
        for i, o in ((1, 2), (2, 1)):
            h = self.host(i)
            tun.ensure_tun_setup(h, self.tun, f"{UDP_NET}.{i}.0/32", UDP_MTU, f"{UDP_NET}.0.0/16")
            control.ensure_forwarder(h, self.tun, f"{UNDER[i]}:{PORT}", self.ctl(i), UDP_MTU,
                                     log_path=f"/tmp/{self.p}-h{i}.log")
            control.set_peers(self.ctl(i), {f"{UDP_NET}.{o}.0/24": (UNDER[o], PORT)})
        for kind in "ux":
            self.servers.append(subprocess.Popen(
                ["ip", "netns", "exec", self.pod(kind, 2), "iperf3", "-s", "-p", "5201"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        for kind, net in (("u", UDP_NET), ("x", VX_NET)):
            subprocess.run(["ip", "netns", "exec", self.pod(kind, 1), "ping", "-c", "1", "-W",
                            "2", f"{net}.2.2"], check=True, capture_output=True)

    @staticmethod
    def _mac(ns: str, dev: str) -> str:
        out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)[0]["address"]

    def teardown(self) -> None:
        for proc in self.servers:
            bl.stop_process(proc)
        for i in (1, 2):
            with contextlib.suppress(Exception):
                control.stop_forwarder(self.ctl(i))
        bl.remove_prefix(self.p)
        for i in (1, 2):
            for path in (self.ctl(i), f"/tmp/{self.p}-h{i}.log"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    topo = Topology("pnb" + secrets.token_hex(2))
    try:
        topo.build()
        yield topo
    finally:
        topo.teardown()


def forwarder_cpu(topo: Topology) -> float:
    """CPU seconds used so far by both forwarders (all processes and threads)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for i in (1, 2):
        info = control.ping(topo.ctl(i)) or {}
        for pid in (info.get("pid"), info.get("receiver_pid")):
            if not pid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def iperf(topo: Topology, kind: str, streams: int, seconds: int) -> dict[str, Any]:
    net = UDP_NET if kind == "u" else VX_NET
    cpu0 = forwarder_cpu(topo)
    proc = subprocess.run(["ip", "netns", "exec", topo.pod(kind, 1), "iperf3", "-c",
                           f"{net}.2.2", "-p", "5201", "-t", str(seconds), "-P", str(streams),
                           "-J"], capture_output=True, text=True, timeout=seconds + 30)
    cpu = forwarder_cpu(topo) - cpu0
    end = json.loads(proc.stdout)["end"]
    moved = end["sum_received"]["bytes"]
    return {"gbit": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0),
            "cpu_s_per_gb": cpu / (moved / 1e9) if kind == "u" and moved else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--json", help="write all figures to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces, TUN)", file=sys.stderr)
        return 2
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    load = [os.getloadavg()[0]]
    with topology() as topo:
        rows = []
        for r in range(args.rounds):
            order = ["x", "u"] if r % 2 == 0 else ["u", "x"]
            for streams in (1, 4):
                figures = {}
                for kind in order:
                    figures[kind] = iperf(topo, kind, streams, args.seconds)
                    results.setdefault((kind, streams), []).append(figures[kind])
                u, x = figures["u"], figures["x"]
                rows.append([f"{r + 1}", f"{streams}", " then ".join(
                    "udp" if k == "u" else "vxlan" for k in order),
                    f"{x['gbit']:.2f}", f"{u['gbit']:.2f}", f"{u['gbit'] / x['gbit']:.2f}",
                    f"{u['cpu_s_per_gb']:.2f}", f"{x['retransmits']}/{u['retransmits']}"])
                bl.console.print(f"round {r + 1} P{streams}: vxlan {x['gbit']:.2f}  "
                                 f"udp {u['gbit']:.2f} Gbit/s")
            load.append(os.getloadavg()[0])
        stats = [control.stats(topo.ctl(i)) for i in (1, 2)]
    bl.console.print(bl.table(
        "Rounds (Gbit/s, iperf3 -J, pod to pod across hosts)",
        ["round", "streams", "order", "vxlan", "udp", "udp/vxlan", "fwd cpu-s/GB",
         "retrans vx/udp"], rows))
    summary = []
    ratios = {}
    for streams in (1, 4):
        x = bl.median([f["gbit"] for f in results[("x", streams)]])
        u = bl.median([f["gbit"] for f in results[("u", streams)]])
        pairs = zip(results[("u", streams)], results[("x", streams)], strict=True)
        paired = bl.median([a["gbit"] / b["gbit"] for a, b in pairs])
        ratios[streams] = u / x
        bar = (f"must >= {MUST}: {bl.verdict(u / x >= MUST)}, goal >= {GOAL}: "
               f"{bl.verdict(u / x >= GOAL)}") if streams == 1 else ""
        summary.append([f"{streams}", f"{x:.2f}", f"{u:.2f}", f"{u / x:.2f}", f"{paired:.2f}",
                        bar])
    bl.console.print(bl.table("Medians", ["streams", "vxlan Gbit/s", "udp Gbit/s",
                                          "udp/vxlan", "median of round ratios",
                                          "bar (1 stream, ratio of medians)"], summary))
    tx = stats[0]
    bl.console.print(
        f"forwarder h1: mean super-packet {tx['tx_bytes'] / max(tx['tx_packets'], 1):.0f} "
        f"bytes, {tx['tx_sendmsg'] / max(tx['tx_packets'], 1):.2f} sendmsg and "
        f"{tx['tx_datagrams'] / max(tx['tx_packets'], 1):.1f} datagrams per packet; "
        f"h2 rx incomplete {stats[1]['rx_drop_incomplete']}, errors "
        f"{stats[1]['rx_write_errors'] + stats[1]['rx_recv_errors']}; "
        f"load average {min(load):.1f}..{max(load):.1f} on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": {f"{k}-{s}": v for (k, s), v in results.items()},
                       "ratios": ratios, "load": load, "stats": stats}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
