"""Shared plumbing for the lab benchmarks (overlay_paths.py, convergence.py).

Why not benchlib: benchlib re-execs a script inside one host namespace of its own, but a
lab builds its own switch, host and pod namespaces from the outside, so these scripts
stay in the namespace they were started in (whose addresses and routes they never
touch) and only name what they create. Every lab and every hand-built namespace of one
run starts with one prefix (`pnb` + 4 hex digits, chosen so no existing namespace or lab
starts with it); `owned_namespaces()` makes sure everything under it goes at the end,
also after a failure, an interrupt or SIGTERM. Processes are ended by PID only.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from types import FrameType

from benchlib import stop_process
from rich.console import Console
from rich.table import Table

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

LABS_DIR = "/var/lib/podnet/labs"
console = Console(width=max(150, shutil.get_terminal_size().columns))


# -- names and namespaces -----------------------------------------------------------------
def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def new_prefix() -> str:
    """`pnb` + 4 hex digits that no namespace or lab on this machine starts with yet."""
    while True:
        pfx = "pnb" + secrets.token_hex(2)
        taken = list_namespaces()
        with contextlib.suppress(FileNotFoundError):
            taken += os.listdir(LABS_DIR)
        if not any(n.startswith(pfx) for n in taken):
            return pfx


def remove_namespaces(prefix: str) -> list[str]:
    """Delete every named namespace starting with `prefix` (ours only, see new_prefix)."""
    mine = [n for n in list_namespaces() if n.startswith(prefix)]
    if mine:
        subprocess.run(["ip", "-force", "-batch", "-"], capture_output=True, check=False,
                       input="\n".join(f"netns del {n}" for n in mine).encode())
    return mine


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def owned_namespaces(prefix: str) -> Iterator[None]:
    """SIGTERM becomes SystemExit (so every `finally` runs); at the end, any namespace
    still named with the prefix is removed and reported."""
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        left = remove_namespaces(prefix)
        if left:
            console.print(f"[yellow]removed {len(left)} leftover namespaces under {prefix}"
                          "[/yellow]")
        signal.signal(signal.SIGTERM, old)


def nsrun(ns: str, *argv: str) -> list[str]:
    """argv run inside a named namespace (nsenter execs: the PID is the command's)."""
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def sh(ns: str | None, cmd: str, *, check: bool = True) -> str:
    argv = nsrun(ns, "sh", "-c", cmd) if ns else ["sh", "-c", cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"[{ns}] {cmd}: rc={proc.returncode} {proc.stderr.strip()}")
    return proc.stdout


def ip_batch(ns: str | None, lines: Sequence[str]) -> None:
    """Many `ip` commands in one process, inside `ns`; fails on the first error."""
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {ns} -batch failed: {proc.stderr.strip()}")


# -- processes ----------------------------------------------------------------------------



class Servers:
    """Long-running servers (iperf3, sockperf) started in namespaces, stopped by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, ns: str, *argv: str) -> subprocess.Popen:
        proc = subprocess.Popen(nsrun(ns, *argv), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                raise RuntimeError(f"server {' '.join(map(str, p.args))} exited "
                                   f"rc={p.returncode}: {err.strip()[-300:]}")

    def stop_all(self) -> None:
        for p in self.procs:
            stop_process(p)
            if p.stderr:
                p.stderr.close()
        self.procs.clear()


# -- machine ------------------------------------------------------------------------------
def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        one, five, fifteen = fh.read().split()[:3]
    return f"{one} {five} {fifteen} (1/5/15 min) on {os.cpu_count()} CPUs"


def machine_line() -> str:
    return f"kernel {os.uname().release}; load average {loadavg()}"


# -- statistics and output ------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return math.nan
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    vals = sorted(values)
    if not vals:
        return math.nan
    return vals[max(1, math.ceil(q / 100 * len(vals))) - 1]


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    return t


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0
