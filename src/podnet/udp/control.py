"""What the agent calls to run the `udp` forwarder: start it detached, push peers, stop it.

Why nsenter and not fork+setns: the agent is multi-threaded (watch loop, RPC server),
and forking a threaded Python process to call setns(2) in the child is unsafe (locks
held by other threads stay locked in the child). `nsenter --net=PATH` is exec'd through
subprocess (no Python code runs between fork and exec), switches only the network
namespace (unlike `ip netns exec`, it does not remount /sys), and execs the interpreter
in place, so nothing stays behind. The forwarder's `--daemon` mode forks itself once
all its fds are open (single-threaded at that point), so when the launcher exits the
forwarder is ready, in its own session, and a child of nobody the agent has to reap:
it survives an agent SIGKILL, and the next agent finds it through the control socket.

Stdlib only (no pyroute2): cheap to import from anything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from podnet.errors import IN_USE, INTERNAL, IO_FAILURE, KERNEL_FAILURE, PodnetError
from podnet.kernel.netns import netns_path
from podnet.udp.peers import parse_hostport

MODULE = "podnet.udp.forwarder"


def request(control_path: str, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one JSON request on the control socket and return the answer (ok: true).

    OSError if nobody answers; PodnetError(INTERNAL) if the forwarder refuses it.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(control_path)
        sock.sendall(json.dumps(req).encode() + b"\n")
        with sock.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise ConnectionResetError(f"forwarder at {control_path} closed without answering")
    resp = json.loads(line)
    if not resp.get("ok"):
        raise PodnetError(INTERNAL, "udp forwarder refused the request",
                          str(resp.get("error", resp)))
    return resp


def ping(control_path: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """The forwarder's identity (pid, tun, bind, mtu, ...), or None if nobody answers."""
    try:
        return request(control_path, {"op": "ping"}, timeout)
    except (OSError, ValueError):
        return None


def _peers_json(peers: Mapping[str, Any]) -> dict[str, list]:
    out: dict[str, list] = {}
    for cidr, dest in peers.items():
        if isinstance(dest, str):
            host, _, port = dest.rpartition(":")
            out[cidr] = [host.strip("[]"), int(port)]
        else:
            out[cidr] = [str(dest[0]), int(dest[1])]
    return out


def set_peers(control_path: str, peers: Mapping[str, Any], timeout: float = 5.0) -> int:
    """Replace the whole peer table {subnet CIDR: (peer IP, port) or "ip:port"}.

    Atomic in the forwarder: packets in flight use either the old or the new table.
    Returns the number of entries. PodnetError(IO_FAILURE) if the forwarder is unreachable.
    """
    try:
        resp = request(control_path, {"op": "set_peers", "peers": _peers_json(peers)},
                       timeout)
    except OSError as exc:
        raise PodnetError(IO_FAILURE, "udp forwarder unreachable", str(exc)) from exc
    return int(resp["count"])


def get_peers(control_path: str, timeout: float = 5.0) -> dict[str, tuple[str, int]]:
    resp = request(control_path, {"op": "get_peers"}, timeout)
    return {cidr: (ip, int(port)) for cidr, (ip, port) in resp["peers"].items()}


def stats(control_path: str, timeout: float = 5.0) -> dict[str, Any]:
    return request(control_path, {"op": "stats"}, timeout)["stats"]


def _src_dir() -> str:
    import podnet

    return os.path.dirname(os.path.dirname(os.path.abspath(podnet.__file__)))


def _check_identity(info: dict[str, Any], tun: str, bind: str, mtu: int) -> None:
    want_ip, want_port = parse_hostport(bind)
    got_ip, got_port = parse_hostport(str(info.get("bind", "")))
    if info.get("tun") != tun or (got_ip, got_port) != (want_ip, want_port) \
            or info.get("mtu") != mtu:
        raise PodnetError(IN_USE, "a udp forwarder with another configuration runs there",
                          f"running tun={info.get('tun')} bind={info.get('bind')} "
                          f"mtu={info.get('mtu')}; wanted tun={tun} bind={bind} mtu={mtu}")


def ensure_forwarder(netns: str | None, tun: str, bind: str, control_path: str, mtu: int,
                     log_path: str | None = None, accept_any: bool = False,
                     timeout: float = 10.0) -> int:
    """The forwarder for `tun` runs (inside `netns`; None: our own namespace); its pid.

    If the control socket answers, the running forwarder is adopted as is (it keeps its
    peer table; push the table again with set_peers). Otherwise a new one is started
    detached. PodnetError(IN_USE) if the one answering has another tun/bind/mtu,
    PodnetError(KERNEL_FAILURE) with the forwarder's own message if it cannot start.
    """
    # A dead forwarder refuses the connection at once; a live but busy one gets time.
    info = ping(control_path, timeout=min(5.0, timeout))
    if info is not None:
        _check_identity(info, tun, bind, mtu)
        return int(info["pid"])
    cmd = [sys.executable, "-m", MODULE, "--tun", tun, "--bind", bind,
           "--control", control_path, "--mtu", str(mtu), "--daemon"]
    if log_path:
        cmd += ["--log", log_path]
    if accept_any:
        cmd.append("--accept-any")
    if netns is not None:
        cmd = ["nsenter", f"--net={netns_path(netns)}", *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_src_dir(), env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, env=env, start_new_session=True, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PodnetError(KERNEL_FAILURE, "cannot start udp forwarder", str(exc)) from exc
    if proc.returncode != 0:
        raise PodnetError(KERNEL_FAILURE, "udp forwarder failed to start",
                          (proc.stderr or proc.stdout).strip()[-2000:])
    try:
        pid = int(proc.stdout.split()[-1])
    except (IndexError, ValueError) as exc:
        raise PodnetError(KERNEL_FAILURE, "udp forwarder did not report its pid",
                          proc.stdout[-500:]) from exc
    deadline = time.monotonic() + timeout
    while True:
        info = ping(control_path)
        if info is not None and int(info["pid"]) == pid:
            return pid
        if time.monotonic() > deadline or not _alive(pid):
            raise PodnetError(KERNEL_FAILURE, "udp forwarder started but does not answer",
                              f"pid {pid}, control {control_path}")
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie lingers until init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def _is_forwarder(pid: int, control_path: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in args and os.fsencode(control_path) in args


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_forwarder(control_path: str, pid: int | None = None, timeout: float = 5.0) -> None:
    """SIGTERM the forwarder (it removes its control socket) and wait for it to exit.

    `pid` None: ask the control socket. Only a process whose command line names this
    control socket is signalled. SIGKILL after `timeout`, then the stale socket is
    removed here. Tolerates a forwarder that is already gone.
    """
    if pid is None:
        info = ping(control_path, timeout=timeout)
        pid = int(info["pid"]) if info else None
    if pid is not None and _alive(pid) and _is_forwarder(pid, control_path):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.01)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                _reap(pid)
                time.sleep(0.01)
        _reap(pid)
    if os.path.exists(control_path) and ping(control_path, timeout=0.5) is None:
        try:
            os.unlink(control_path)
        except FileNotFoundError:
            pass
