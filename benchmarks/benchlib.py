"""Shared plumbing for podnet's benchmarks (not a test helper).

Every benchmark runs inside a host network namespace of its own: the outer process
creates `<prefix>-host` (prefix `pnb` + 4 hex digits), re-execs itself once under
`nsenter --net=...` (so every plugin exec afterwards is a plain subprocess, with no
nsenter cost on either side), and removes every namespace under the prefix at the
end, also when the inner run fails or is interrupted. Nothing touches the root
namespace's addresses or routes. Processes are ended by PID only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

INSIDE_ENV = "PODNET_BENCH_PREFIX"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
REF_PLUGINS = "/usr/lib/cni"
console = Console(width=max(140, shutil.get_terminal_size().columns))


# -- namespaces -------------------------------------------------------------------------
def ip_batch(lines: Sequence[str]) -> None:
    """Run many `ip` commands in one process (`ip -force -batch -`)."""
    if lines:
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines).encode(),
                       check=False, capture_output=True)


def create_netns(names: Sequence[str]) -> None:
    ip_batch([f"netns add {n}" for n in names])
    missing = [n for n in names if not os.path.exists(f"/run/netns/{n}")]
    if missing:
        raise RuntimeError(f"could not create namespaces {missing[:3]}...")


def remove_prefix(prefix: str) -> None:
    """Delete every named namespace `<prefix>-*` (ours only)."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return
    ip_batch([f"netns del {n}" for n in names if n.startswith(prefix + "-")])


def prefix() -> str:
    """The run's namespace prefix (only valid inside the re-exec'd process)."""
    return os.environ[INSIDE_ENV]


def host_ns() -> str:
    return f"{prefix()}-host"


def run_in_host_namespace(inner: Callable[[], int]) -> int:
    """Outer: make the host namespace, re-exec this script inside it, clean up. Inner: run."""
    if os.environ.get(INSIDE_ENV):
        return inner()
    taken = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    while True:  # never share a prefix with namespaces that are not ours
        pfx = "pnb" + secrets.token_hex(2)
        if not any(n.startswith(pfx + "-") for n in taken):
            break
    host = f"{pfx}-host"
    try:
        create_netns([host])
        subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
        env = {**os.environ, INSIDE_ENV: pfx}
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{host}", sys.executable, *sys.argv], env=env
        )
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the child got the SIGINT too; let it clean up
                continue
    finally:
        remove_prefix(pfx)


# -- processes --------------------------------------------------------------------------
@dataclass
class Exec:
    rc: int
    out: bytes
    err: bytes
    seconds: float
    cpu: float  # user+sys of the plugin's process tree (valid when execs are sequential)

    def json(self) -> dict:
        return json.loads(self.out) if self.out.strip() else {}


def cni_env(command: str, container_id: str, netns: str, cni_path: str,
            ifname: str = "eth0") -> dict[str, str]:
    """The environment a runtime gives a CNI plugin."""
    return {"PATH": PATH, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": cni_path}


def exec_plugin(binary: str, env: dict[str, str], stdin: bytes) -> Exec:
    """Exec a plugin as a runtime does; the time covers spawn to exit only."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([binary], input=stdin, env=env, capture_output=True, timeout=120)
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return Exec(proc.returncode, proc.stdout, proc.stderr, seconds, cpu)


def checked(res: Exec, what: str) -> Exec:
    if res.rc != 0:
        raise RuntimeError(f"{what} failed rc={res.rc}: {res.out.decode()} {res.err.decode()}")
    return res


class Agent:
    """A real `podnet agent` in the current (host) namespace, stopped by PID."""

    def __init__(self, store: str, sock: str, log: str, node: str = "bench") -> None:
        self.store, self.socket, self.log, self.node = store, sock, log, node
        self.proc: subprocess.Popen | None = None

    def start(self) -> Agent:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "podnet", "--store", self.store, "--socket",
                 self.socket, "agent", "--node-name", self.node],
                stdout=logf, stderr=logf, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {open(self.log).read()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
                return self
            time.sleep(0.05)
        raise RuntimeError("agent did not start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """user+sys CPU of the agent so far (all threads; clock-tick resolution)."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM (then SIGKILL) one process we started, by its PID."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def started(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    try:
        yield proc
    finally:
        stop_process(proc)


# -- statistics and output ----------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    t = Table(title=title, title_justify="left", min_width=min(len(title) + 4, 140))
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    return t


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """A nested JSON value as {"a.b[0].c": "value"}, for comparing settings."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and all(not isinstance(x, dict | list) for x in obj):
        out[prefix] = ",".join(map(str, obj))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = str(obj)
    return out
