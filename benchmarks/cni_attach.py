"""CNI ADD/DEL speed: podnet's shim (agent running) against the reference bridge + host-local.

What is compared: the time a runtime waits for one plugin exec, from spawn to exit,
for `podnet-cni` (the fast shim installed by podnet.install.install_cni, forwarding to
a real `podnet agent`) and for /usr/lib/cni/bridge with host-local IPAM (dataDir in a
temp dir). Both sides get equivalent configurations: gateway on the bridge, default
route in the pod, hairpin on, no masquerade, cniVersion 1.0.0.

How: the script re-execs itself once inside a host namespace of its own (prefix
`pnb` + 4 hex), so each plugin is a plain subprocess (environment CNI_* + stdin, as a
runtime execs it) timed with time.perf_counter around subprocess.run. Every pod is a
fresh named namespace made beforehand (not timed). Phase 1 ADDs pod i on both sides,
alternating which side goes first, then DELs them all in the same alternating order
(DEL gets CNI_NETNS and prevResult, as podman sends it). Phase 2 fires N concurrent
podnet ADDs from separate processes (a thread per exec, as a runtime's goroutines),
checks they all succeed with N distinct addresses that the kernel shows, then DELs
them all concurrently; the reference plugins get the same burst for context.
CPU per call (plugin process tree from rusage, podnet's agent from /proc) is printed
too: on a shared machine it is steadier than wall time.
Everything under the prefix is removed at the end, also on failure.

    python3 benchmarks/cni_attach.py --pods 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import benchlib as bl

POD_SUBNET = "10.92.0.0/16"
REF_SUBNET = "10.93.0.0/16"
NET_NAME = "pnbench"
REF_BRIDGE = "refbr0"
WARMUP = 3


@dataclass
class Side:
    name: str
    binary: str
    conf: dict
    cni_path: str
    tag: str  # namespace role letter
    add: list[float] = field(default_factory=list)
    dele: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=lambda: {"ADD": 0.0, "DEL": 0.0})
    agent_cpu: dict[str, float] = field(default_factory=lambda: {"ADD": 0.0, "DEL": 0.0})
    results: dict[str, dict] = field(default_factory=dict)

    def stdin(self, prev: dict | None = None) -> bytes:
        conf = dict(self.conf)
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf).encode()

    def call(self, command: str, cid: str, netns: str, prev: dict | None = None) -> bl.Exec:
        env = bl.cni_env(command, cid, f"/run/netns/{netns}", self.cni_path)
        res = bl.exec_plugin(self.binary, env, self.stdin(prev))
        return bl.checked(res, f"{self.name} {command} {netns}")


def make_sides(tmp: str, agent_socket: str) -> list[Side]:
    from podnet.install import install_cni

    plugin = install_cni(os.path.join(tmp, "bin"))
    podnet = Side(
        "podnet", plugin,
        {"cniVersion": "1.0.0", "name": NET_NAME, "type": "podnet-cni",
         "subnet": POD_SUBNET, "agentSocket": agent_socket},
        f"{os.path.dirname(plugin)}:{bl.REF_PLUGINS}", "a",
    )
    ref = Side(
        "reference", os.path.join(bl.REF_PLUGINS, "bridge"),
        {"cniVersion": "1.0.0", "name": "refbench", "type": "bridge", "bridge": REF_BRIDGE,
         "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "subnet": REF_SUBNET,
                  "dataDir": os.path.join(tmp, "host-local")}},
        bl.REF_PLUGINS, "r",
    )
    return [podnet, ref]


def address(result: dict) -> str:
    return str(result["ips"][0]["address"])


def host_veths() -> int:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "veth"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def bridge_ports(bridge: str) -> int:
    out = subprocess.run(["ip", "-o", "link", "show", "master", bridge],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# -- phase 1: sequential, alternating ------------------------------------------------------
def sequential(sides: list[Side], pods: int, agent: bl.Agent) -> None:
    pfx = bl.prefix()
    for s in sides:
        warm = [f"{pfx}-w{s.tag}{i}" for i in range(WARMUP)]
        bl.create_netns(warm)
        for i, ns in enumerate(warm):
            res = s.call("ADD", f"warm{s.tag}{i}", ns)
            s.call("DEL", f"warm{s.tag}{i}", ns, res.json())
    names = {s.name: [f"{pfx}-{s.tag}{i:04d}" for i in range(pods)] for s in sides}
    bl.create_netns([n for ns in names.values() for n in ns])
    ids = {s.name: [secrets.token_hex(32) for _ in range(pods)] for s in sides}
    baseline = host_veths()
    for command in ("ADD", "DEL"):
        for i in range(pods):
            for s in sides if i % 2 == 0 else sides[::-1]:
                ns, cid = names[s.name][i], ids[s.name][i]
                agent0 = agent.cpu_seconds()
                if command == "ADD":
                    res = s.call("ADD", cid, ns)
                    s.add.append(res.seconds)
                    s.results[ns] = res.json()
                else:
                    res = s.call("DEL", cid, ns, s.results[ns])
                    s.dele.append(res.seconds)
                s.cpu[command] += res.cpu
                s.agent_cpu[command] += agent.cpu_seconds() - agent0
        if command == "ADD":
            for s in sides:
                addrs = {address(r) for r in s.results.values()}
                if len(addrs) != pods:
                    raise RuntimeError(f"{s.name}: {len(addrs)} distinct addresses for {pods}")
            if host_veths() - baseline != 2 * pods:
                raise RuntimeError(f"expected {2 * pods} new host veths, see {host_veths()}")
    if host_veths() != baseline:
        raise RuntimeError(f"DEL left {host_veths() - baseline} host veths behind")


def report_sequential(sides: list[Side], pods: int) -> float:
    rows = []
    for s in sides:
        rows.append([s.name, ms(bl.pct(s.add, 50)), ms(bl.pct(s.add, 95)),
                     ms(bl.pct(s.dele, 50)), ms(bl.pct(s.dele, 95))])
    p, r = sides
    ratios = [bl.pct(p.add, 50) / bl.pct(r.add, 50), bl.pct(p.add, 95) / bl.pct(r.add, 95),
              bl.pct(p.dele, 50) / bl.pct(r.dele, 50), bl.pct(p.dele, 95) / bl.pct(r.dele, 95)]
    rows.append(["ratio podnet/reference", *(f"{x:.2f}x" for x in ratios)])
    bl.console.print(bl.table(
        f"CNI plugin exec, spawn to exit, {pods} pods per side, alternating (ms)",
        ["side", "ADD p50", "ADD p95", "DEL p50", "DEL p95"], rows))
    cpu_rows = []
    for s in sides:
        total = {c: (s.cpu[c] + s.agent_cpu[c]) / pods for c in ("ADD", "DEL")}
        cpu_rows.append([s.name, ms(s.cpu["ADD"] / pods), ms(s.agent_cpu["ADD"] / pods),
                         ms(total["ADD"]), ms(s.cpu["DEL"] / pods),
                         ms(s.agent_cpu["DEL"] / pods), ms(total["DEL"])])
    bl.console.print(bl.table(
        "CPU per call, mean ms (plugin process tree: rusage; agent: /proc ticks)",
        ["side", "ADD plugin", "ADD agent", "ADD total", "DEL plugin", "DEL agent",
         "DEL total"], cpu_rows))
    add_ratio = ratios[0]
    bl.console.print(bl.table(
        "Issue's bar for podnet ADD p50 / reference ADD p50",
        ["criterion", "bound", "measured", "result"],
        [["must", "<= 2.00x", f"{add_ratio:.2f}x", bl.verdict(add_ratio <= 2.0)],
         ["goal", "<= 1.00x", f"{add_ratio:.2f}x", bl.verdict(add_ratio <= 1.0)]]))
    return add_ratio


# -- phase 2: concurrent burst ---------------------------------------------------------------
@dataclass
class Burst:
    side: str
    ok: int
    distinct: int
    kernel_ok: int
    wall_add: float
    lat: list[float]
    del_ok: int
    wall_del: float
    leftovers: str
    plugin_cpu: float
    agent_cpu: float


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def burst(side: Side, count: int, bridge: str, agent: bl.Agent) -> Burst:
    pfx = bl.prefix()
    names = [f"{pfx}-c{side.tag}{i:04d}" for i in range(count)]
    bl.create_netns(names)
    ids = [secrets.token_hex(32) for _ in range(count)]
    baseline = host_veths()

    def add(i: int) -> bl.Exec:
        env = bl.cni_env("ADD", ids[i], f"/run/netns/{names[i]}", side.cni_path)
        return bl.exec_plugin(side.binary, env, side.stdin())

    cpu0, agent0 = children_cpu(), agent.cpu_seconds()
    with ThreadPoolExecutor(max_workers=count) as pool:
        t0 = time.perf_counter()
        adds = list(pool.map(add, range(count)))
        wall_add = time.perf_counter() - t0
    plugin_cpu = children_cpu() - cpu0
    agent_cpu = agent.cpu_seconds() - agent0 if side.name == "podnet" else 0.0
    ok = [r for r in adds if r.rc == 0]
    for r in adds:
        if r.rc != 0:
            detail = f"{r.out.decode()} {r.err.decode()}"
            bl.console.print(f"[red]{side.name} ADD failed[/red]: {detail}")
            break
    results = [r.json() if r.rc == 0 else {} for r in adds]
    addrs = [address(r) for r in results if r]
    kernel_ok = 0  # independent witness: the pod's eth0 carries the address the result gave
    for ns, res in zip(names, results, strict=True):
        if not res:
            continue
        shown = subprocess.run(["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0"],
                               capture_output=True, text=True).stdout
        kernel_ok += f" {address(res)} " in shown
    ports = bridge_ports(bridge)
    if ports != len(ok):
        bl.console.print(f"[red]{side.name}: {ports} bridge ports for {len(ok)} pods[/red]")

    def dele(i: int) -> bl.Exec:
        env = bl.cni_env("DEL", ids[i], f"/run/netns/{names[i]}", side.cni_path)
        return bl.exec_plugin(side.binary, env, side.stdin(results[i] or None))

    with ThreadPoolExecutor(max_workers=count) as pool:
        t0 = time.perf_counter()
        dels = list(pool.map(dele, range(count)))
        wall_del = time.perf_counter() - t0
    left = host_veths() - baseline
    leftovers = f"{left} veths"
    if side.name == "podnet":
        leftovers += f", {len(store_allocations())} store addrs"
    return Burst(side.name, len(ok), len(set(addrs)), kernel_ok, wall_add,
                 [r.seconds for r in adds], sum(r.rc == 0 for r in dels), wall_del, leftovers,
                 plugin_cpu, agent_cpu)


_STORE_PATH: list[str] = []


def store_allocations() -> dict:
    from podnet.resources import open_resources

    with open_resources(_STORE_PATH[0]) as res:
        return res.address_owners(NET_NAME)


def report_burst(bursts: list[Burst], count: int) -> bool:
    metrics: list[tuple[str, Callable[[Burst], str]]] = [
        ("ADD succeeded", lambda b: f"{b.ok}/{count}"),
        ("distinct addresses", lambda b: str(b.distinct)),
        ("address on the pod's eth0 (ip)", lambda b: f"{b.kernel_ok}/{count}"),
        ("ADD burst wall s", lambda b: f"{b.wall_add:.2f}"),
        ("plugin processes CPU s", lambda b: f"{b.plugin_cpu:.2f}"),
        ("agent CPU s", lambda b: f"{b.agent_cpu:.2f}" if b.side == "podnet" else "-"),
        ("one exec p50 ms", lambda b: ms(bl.pct(b.lat, 50))),
        ("one exec p95 ms", lambda b: ms(bl.pct(b.lat, 95))),
        ("one exec max ms", lambda b: ms(max(b.lat))),
        ("DEL succeeded", lambda b: f"{b.del_ok}/{count}"),
        ("DEL burst wall s", lambda b: f"{b.wall_del:.2f}"),
        ("left after DEL", lambda b: b.leftovers),
    ]
    rows = [[name, *(fn(b) for b in bursts)] for name, fn in metrics]
    bl.console.print(bl.table(
        f"{count} concurrent ADDs from separate processes, then {count} concurrent DELs",
        ["", *(b.side for b in bursts)], rows))
    p = bursts[0]
    good = (p.ok == count and p.distinct == count and p.kernel_ok == count
            and p.del_ok == count and p.leftovers.startswith("0 veths, 0 "))
    bl.console.print(f"podnet concurrent burst: {bl.verdict(good)} "
                     f"(all succeed, {count} distinct addresses, all removed)")
    return good


def inner(args: argparse.Namespace) -> int:
    pfx = bl.prefix()
    with tempfile.TemporaryDirectory(prefix=f"{pfx}-") as tmp:
        store = os.path.join(tmp, "podnet.db")
        _STORE_PATH.append(store)
        agent = bl.Agent(store, os.path.join(tmp, "agent.sock"), os.path.join(tmp, "agent.log"))
        agent.start()
        try:
            sides = make_sides(tmp, agent.socket)
            fds0 = agent.open_fds()
            bl.console.print(f"[bold]podnet CNI benchmark[/bold] prefix {pfx}, "
                             f"{args.pods} pods per side, python {sys.version.split()[0]}, "
                             f"load {os.getloadavg()[0]:.2f}")
            sequential(sides, args.pods, agent)
            ratio = report_sequential(sides, args.pods)
            bursts = []
            if args.concurrent:
                podnet_bridge = "pnbr-" + NET_NAME
                bursts.append(burst(sides[0], args.concurrent, podnet_bridge, agent))
                if not args.no_ref_burst:
                    bursts.append(burst(sides[1], args.concurrent, REF_BRIDGE, agent))
                burst_ok = report_burst(bursts, args.concurrent)
            else:
                burst_ok = True
            calls = 2 * (args.pods + WARMUP) + 2 * args.concurrent
            bl.console.print(f"agent open fds: {fds0} before, {agent.open_fds()} after "
                             f"{calls} CNI calls (pid {agent.pid})")
        finally:
            agent.stop()
    return 0 if ratio <= 2.0 and burst_ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=200, help="sequential pods per side")
    ap.add_argument("--concurrent", type=int, default=200,
                    help="concurrent ADDs in phase 2 (0 skips it)")
    ap.add_argument("--no-ref-burst", action="store_true",
                    help="skip the reference plugins' concurrent burst")
    args = ap.parse_args()
    return bl.run_in_host_namespace(lambda: inner(args))


if __name__ == "__main__":
    sys.exit(main())
