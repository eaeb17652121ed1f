"""The lab's processes (agents, etcd, udp forwarders): found and stopped by PID only.

Why every signal is preceded by an identity check: PIDs come from a state file or a pid
file that may be older than a reboot or a crash, and PIDs are reused. A PID is signalled
only while its command line still names the lab-specific path (agent socket, etcd data
dir) it was started with, so `lab down` can never hit an unrelated process.

Processes may be children of this Python process (the Python API) or of nobody (the CLI
exited long ago); both are waited for by polling /proc, and our own children are reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (a zombie of ours is reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    state = stat.rsplit(b")", 1)[-1].split()[0:1]
    if state in ([b"Z"], [b"X"]):
        _reap(pid)
        return False
    return True


def matches(pid: int, marker: str) -> bool:
    """pid is alive and `marker` (a lab-specific path) is one of its arguments' text."""
    args = cmdline(pid)
    return bool(args) and alive(pid) and any(marker in a for a in args or [])


def stop(pid: int | None, marker: str, *, sig: int = signal.SIGTERM, timeout: float = 5.0,
         popen: subprocess.Popen | None = None) -> bool:
    """Signal pid (then SIGKILL after timeout) if it is still the process we started.

    Returns True if a process was signalled. Waits until it is gone.
    """
    if pid is None or not matches(pid, marker):
        if popen is not None:
            with contextlib.suppress(Exception):
                popen.poll()
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not wait_gone(pid, timeout, popen=popen) and sig != signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5.0, popen=popen)
    return True


def wait_gone(pid: int, timeout: float, *, popen: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            with contextlib.suppress(Exception):
                if popen.poll() is not None:
                    return True
        if not alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def find_with_marker(markers: tuple[str, ...]) -> list[int]:
    """PIDs of podnet or etcd processes whose arguments name one of the lab's paths.

    The last resort after a crash lost the state file: only podnet (`-m podnet`, the
    udp forwarder) and etcd processes are considered, and only when one of their
    arguments contains a path unique to this lab.
    """
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        args = cmdline(int(entry))
        if not args:
            continue
        is_ours = any("podnet" in a for a in args[:4]) or os.path.basename(args[0]) == "etcd"
        if is_ours and any(m in a for m in markers for a in args):
            found.append(int(entry))
    return found


def read_pid_file(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def stop_many(items: list[tuple[int | None, str, subprocess.Popen | None]], *,
              timeout: float = 5.0) -> list[int]:
    """stop() for many processes at once: SIGTERM all, wait for all, SIGKILL the rest.

    Why together: agents each take a moment to shut down, and a 30-host lab stopped one
    by one would spend seconds waiting in turn. Returns the PIDs signalled.
    """
    signalled = []
    for pid, marker, _popen in items:
        if pid is not None and matches(pid, marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
    popens = {pid: p for pid, _m, p in items if pid is not None}
    deadline = time.monotonic() + timeout
    for pid in signalled:
        if not wait_gone(pid, max(0.0, deadline - time.monotonic()), popen=popens.get(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5.0, popen=popens.get(pid))
    return signalled


def in_namespaces(paths: list[str]) -> list[tuple[int, str, str]]:
    """(pid, namespace path, command) of every process inside one of these namespaces.

    Only reported, never signalled: a process the lab did not start (a shell someone
    opened with `lab exec`) keeps its namespace alive after `ip netns del`, and the
    user should hear about it rather than have it killed.
    """
    wanted: dict[tuple[int, int], str] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            wanted[(st.st_dev, st.st_ino)] = path
    found = []
    if not wanted:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        path = wanted.get((st.st_dev, st.st_ino))
        if path is not None and alive(int(entry)):
            found.append((int(entry), path, " ".join(cmdline(int(entry)) or [])[:120]))
    return found
