"""`podnet lab ...`: build, inspect, use and remove labs from the shell.

Why thin: every command loads the lab's state file and calls the Python API
(podnet.lab.lab.Lab), so the CLI and `with Lab(...)` can never drift apart. `lab up`
leaves the lab running (agents and etcd are detached); `lab down` removes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

DEFAULT_NAME = "lab"
MATRIX_MAX = 12  # pods; beyond this `lab ping` prints one row per source


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console()


def _lab_table(st: Any) -> Any:
    """One row per pod (a host without pods gets one row): the lab at a glance."""
    from rich.table import Table

    table = Table(title=f"lab {st.name}: {st.backend} over {st.store} "
                  f"({len(st.hosts)} hosts, {len(st.pods())} pods)")
    for col in ("host", "underlay", "subnet", "agent", "pod", "pod ip", "pod netns"):
        table.add_column(col)
    for h in st.hosts:
        rows = h.pods or [None]
        for i, p in enumerate(rows):
            first = i == 0
            table.add_row(
                h.name if first else "", h.ip if first else "",
                (h.subnet or "-") if first else "",
                str(h.agent_pid or "-") if first else "",
                p.name if p else "-", (p.ip or "-") if p else "-", p.netns if p else "",
            )
    return table


def cmd_up(args: argparse.Namespace) -> int:
    from podnet.errors import INVALID_CONFIG, PodnetError
    from podnet.lab.lab import Lab
    from podnet.lab.topo import Topo

    try:
        options = json.loads(args.backend_options) if args.backend_options else None
    except ValueError as exc:
        raise PodnetError(INVALID_CONFIG, "--backend-options is not JSON", str(exc)) from exc
    if options is not None and not isinstance(options, dict):
        raise PodnetError(INVALID_CONFIG, "--backend-options must be a JSON object")
    lab = Lab(Topo(hosts=args.hosts, pods_per_host=args.pods_per_host,
                   segments=args.segments),
              backend=args.backend, store=args.store_kind, name=args.name,
              lease_ttl=args.lease_ttl, renew_margin=args.renew_margin,
              resync_period=args.resync_period, backend_options=options,
              start_timeout=args.timeout, etcd_auth=args.etcd_auth)
    t0 = time.monotonic()
    lab.up()
    took = time.monotonic() - t0
    if args.json:
        _print_json(lab.state.public())
        return 0
    console = _console()
    console.print(_lab_table(lab.state))
    st = lab.state
    extra = f", etcd pid {st.etcd.pid}" if st.etcd else ""
    console.print(f"store {st.store_url}{extra}; network {st.network} {lab.backend} "
                  f"10.244.0.0/16; built in {took:.1f} s")
    console.print(f"next: podnet lab ping {st.name} | podnet lab exec {st.name} h1-p1 -- "
                  f"ip addr | podnet lab down {st.name}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from podnet.lab import state

    if args.lab:
        st = state.load(args.lab)
        if args.json:
            _print_json(st.public())
        else:
            _console().print(_lab_table(st))
        return 0
    labs = []
    for name in state.known_labs():
        try:
            labs.append(state.load(name))
        except Exception:  # noqa: BLE001 - a half-removed lab is still listed
            continue
    if args.json:
        _print_json({"labs": [st.public() for st in labs]})
        return 0
    from rich.table import Table

    table = Table(title="labs")
    for col in ("name", "backend", "store", "segments", "hosts", "pods", "status"):
        table.add_column(col)
    for st in labs:
        table.add_row(st.name, st.backend, st.store, str(st.segments), str(len(st.hosts)),
                      str(len(st.pods())), st.status)
    _console().print(table)
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    from podnet.lab.lab import Lab

    lab = Lab.attach(args.lab)
    results = lab.ping_all(timeout=args.timeout, tries=args.tries)
    failed = [r for r in results if not r.ok]
    if args.json:
        _print_json({"pairs": [r.to_dict() for r in results]})
        return 1 if failed else 0
    names = [p.name for p in lab.pods]
    table = _ping_matrix(lab.name, names, results) if len(names) <= MATRIX_MAX \
        else _ping_summary(lab.name, names, results)
    console = _console()
    console.print(table)
    console.print(f"{len(results) - len(failed)}/{len(results)} pairs reachable")
    return 1 if failed else 0


def _ping_matrix(lab: str, names: list[str], results: list[Any]) -> Any:
    from rich.table import Table

    cell = {(r.src, r.dst): r for r in results}
    table = Table(title=f"lab {lab}: ping rtt in ms (rows: src, columns: dst)")
    table.add_column("src")
    for n in names:
        table.add_column(n, justify="right")
    for src in names:
        row = []
        for dst in names:
            r = cell.get((src, dst))
            if r is None:
                row.append("")
            elif r.ok:
                row.append(f"[green]{r.rtt_ms:.3f}[/green]" if r.rtt_ms is not None else "ok")
            else:
                row.append("[red]x[/red]")
        table.add_row(src, *row)
    return table


def _ping_summary(lab: str, names: list[str], results: list[Any]) -> Any:
    """Too many pods for a matrix: one row per source, with the destinations it missed."""
    from rich.table import Table

    table = Table(title=f"lab {lab}: ping per source pod")
    for col in ("src", "reachable", "median rtt ms", "unreachable"):
        table.add_column(col)
    for src in names:
        mine = [r for r in results if r.src == src]
        ok = sorted(r.rtt_ms for r in mine if r.ok and r.rtt_ms is not None)
        bad = [r.dst for r in mine if not r.ok]
        table.add_row(src, f"{len(mine) - len(bad)}/{len(mine)}",
                      f"{ok[len(ok) // 2]:.3f}" if ok else "-",
                      f"[red]{', '.join(bad)}[/red]" if bad else "")
    return table


def cmd_exec(args: argparse.Namespace) -> int:
    from podnet.errors import INVALID_ENV, PodnetError
    from podnet.lab.lab import Lab

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise PodnetError(INVALID_ENV, "no command given", "podnet lab exec LAB NAME -- CMD")
    lab = Lab.attach(args.lab)
    try:
        return lab.exec(args.name, cmd, timeout=None, capture=False).returncode
    except FileNotFoundError as exc:
        print(f"podnet: error: {exc}", file=sys.stderr)
        return 127
    except subprocess.SubprocessError as exc:
        print(f"podnet: error: {exc}", file=sys.stderr)
        return 1


def cmd_down(args: argparse.Namespace) -> int:
    from podnet.lab import state
    from podnet.lab.teardown import teardown

    name = state.check_name(args.lab)
    report = teardown(name)
    if args.json:
        _print_json(report)
    elif any(report[k] for k in ("processes", "namespaces", "dirs")):
        print(f"lab {name} removed: {len(report['processes'])} processes, "
              f"{len(report['namespaces'])} namespaces, {len(report['dirs'])} dirs")
    else:
        print(f"lab {name}: nothing to remove")
    for line in [] if args.json else report["left_running"]:
        print(f"warning: not started by the lab, left running: {line}", file=sys.stderr)
    return 0


def add_lab_commands(subparsers: Any) -> None:
    """Register `podnet lab` and its subcommands on the top-level subparsers."""
    from podnet.lab.state import (
        BACKENDS,
        DEFAULT_LEASE_TTL,
        DEFAULT_RENEW_MARGIN,
        DEFAULT_RESYNC_PERIOD,
        STORES,
    )

    lab = subparsers.add_parser(
        "lab", help="multi-host labs of network namespaces on this machine",
        description="Build N podnet hosts as network namespaces on an underlay switch, "
        "each with a real agent, pods attached through the CNI plugin.")
    lsub = lab.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    def add(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp = lsub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    up = add("up", cmd_up, "build a lab and leave it running")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--pods-per-host", type=int, default=2)
    up.add_argument("--backend", choices=BACKENDS, default="vxlan",
                    help="overlay backend (bridge: per-host bridges, no cross-host path)")
    up.add_argument("--store", dest="store_kind", choices=STORES, default="sqlite",
                    help="sqlite: one shared file; etcd: a real etcd in the switch namespace")
    up.add_argument("--etcd-auth", action="store_true",
                    help="with --store etcd: also turn on etcd users (agents log in as "
                    "podnet); TLS with client certificates is always on")
    up.add_argument("--name", default=DEFAULT_NAME, help="lab name, prefix of its namespaces")
    up.add_argument("--segments", type=int, choices=(1, 2), default=1,
                    help="2: two underlay segments joined by a router namespace")
    up.add_argument("--lease-ttl", type=float, default=DEFAULT_LEASE_TTL, metavar="SECONDS")
    up.add_argument("--renew-margin", type=float, default=DEFAULT_RENEW_MARGIN,
                    metavar="SECONDS")
    up.add_argument("--resync-period", type=float, default=DEFAULT_RESYNC_PERIOD,
                    metavar="SECONDS")
    up.add_argument("--backend-options", metavar="JSON",
                    help='extra Backend keys, e.g. {"DirectRouting": true, "VNI": 7}')
    up.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                    help="how long to wait for the agents to be ready")
    up.add_argument("--json", action="store_true", help="print the lab as JSON (as `lab ls`)")

    ls = add("ls", cmd_ls, "list labs, or show one lab's hosts and pods")
    ls.add_argument("lab", nargs="?")
    ls.add_argument("--json", action="store_true", help="print JSON")

    ping = add("ping", cmd_ping, "all-pairs pod reachability (exit 1 if any pair fails)")
    ping.add_argument("lab")
    ping.add_argument("--json", action="store_true", help="print JSON")
    ping.add_argument("--timeout", type=float, default=1.0, metavar="SECONDS",
                      help="wait this long for replies per try")
    ping.add_argument("--tries", type=int, default=2, help="ask unanswered pairs again")

    ex = add("exec", cmd_exec, "run a command in a host, pod, switch (sw) or router (rt)")
    ex.add_argument("lab")
    ex.add_argument("name", help="h1, h1-p1, sw, sw1, sw2, rt")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    down = add("down", cmd_down, "stop a lab's processes, delete its namespaces and files")
    down.add_argument("lab", nargs="?", default=DEFAULT_NAME)
    down.add_argument("--json", action="store_true", help="print what was removed as JSON")


register = add_lab_commands
