"""The measuring tools, run between two Endpoints: iperf3 -J (throughput), sockperf
ping-pong (TCP and UDP request/response latency), ping (ICMP round trip).

Why external tools and not Python sockets: a Python sender would measure Python. iperf3
and sockperf are what people quote, their numbers can be checked against other setups,
and their JSON/text output is kept raw in results.json. sockperf reports latency as half
the round trip (its convention); ping reports the full round trip.

Servers are started once per path and stopped by PID at the end; clients retry a few
times when the server is not listening yet (a just-started server in a namespace).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.bench.endpoint import Endpoint

IPERF_PORT = 5201
SOCKPERF_PORT = 11111
RETRIES = 6
_PCT = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")
_AVG = re.compile(r"avg-latency=([\d.]+)")
_VALID = re.compile(r"ReceivedMessages=(\d+)")
_PING = re.compile(r"time=([\d.]+) ms")


class MeasureError(RuntimeError):
    """A tool failed on a path (kept in the run record; the path is marked failed)."""


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else list(cmd)


@dataclass(frozen=True)
class Pinning:
    """CPU pinning (--pin): latency ends share CPU 0 (one cache, no cross-CPU wake-ups,
    which make unpinned sockperf figures bimodal on small VMs); iperf3 client and server
    get CPUs 0 and 1 so the sender and receiver do not fight for one core."""

    client_rr: int | None = None
    server_rr: int | None = None
    client_tput: int | None = None
    server_tput: int | None = None

    @classmethod
    def on(cls, cpus: int) -> Pinning:
        other = 1 if cpus > 1 else 0
        return cls(0, 0, 0, other)


# -- servers ------------------------------------------------------------------------------
def _stop(proc: subprocess.Popen) -> None:
    """End one server we started, by its PID (nsenter execs the tool: same PID)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(3)


@contextlib.contextmanager
def servers(ep: Endpoint, pin: Pinning, *, iperf_port: int = IPERF_PORT,
            sockperf_port: int = SOCKPERF_PORT) -> Iterator[None]:
    """iperf3 and sockperf (TCP and UDP) servers on `ep` for the duration of the block."""
    cmds = [
        pinned(["iperf3", "-s", "-p", str(iperf_port)], pin.server_tput),
        pinned(["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", str(sockperf_port)],
               pin.server_rr),
        pinned(["sockperf", "server", "-i", "0.0.0.0", "-p", str(sockperf_port)],
               pin.server_rr),
    ]
    procs: list[subprocess.Popen] = []
    try:
        for cmd in cmds:
            procs.append(ep.start(cmd))
        time.sleep(0.2)
        for proc, cmd in zip(procs, cmds, strict=True):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise MeasureError(f"{cmd[0]} server on {ep.label} exited: {err.strip()}")
        yield
    finally:
        for proc in procs:
            _stop(proc)
            if proc.stderr:
                proc.stderr.close()


# -- clients -------------------------------------------------------------------------------
def iperf3(client: Endpoint, target: str, *, seconds: int, streams: int = 1,
           port: int = IPERF_PORT, cpu: int | None = None) -> dict[str, Any]:
    """TCP throughput, all streams summed at the receiver (Gbit/s), plus iperf3's JSON."""
    cmd = pinned(["iperf3", "-c", target, "-p", str(port), "-t", str(int(seconds)),
                  "-P", str(streams), "-J", "--connect-timeout", "3000"], cpu)
    error = ""
    for attempt in range(RETRIES):
        proc = client.run(cmd, timeout=seconds + 30)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            data = {}
        error = str(data.get("error") or proc.stderr.strip() or f"rc={proc.returncode}")
        if proc.returncode == 0 and "end" in data and not data.get("error"):
            end = data["end"]
            received = end.get("sum_received") or end.get("sum") or {}
            return {
                "tool": "iperf3", "streams": streams, "seconds": seconds,
                "gbps": received.get("bits_per_second", 0.0) / 1e9,
                "retransmits": (end.get("sum_sent") or {}).get("retransmits"),
                "cpu_percent": end.get("cpu_utilization_percent"),
                "raw": data,
            }
        time.sleep(0.3 * (attempt + 1))
    raise MeasureError(f"iperf3 {client.label} -> {target}: {error}")


def sockperf(client: Endpoint, target: str, *, seconds: int, tcp: bool,
             port: int = SOCKPERF_PORT, cpu: int | None = None, msg_size: int = 64
             ) -> dict[str, Any]:
    """Request/response latency (sockperf ping-pong: half the round trip), p50/p99 in µs."""
    cmd = ["sockperf", "ping-pong", "-i", target, "-p", str(port), "-t", str(int(seconds)),
           "-m", str(msg_size)]
    cmd = pinned([*cmd, "--tcp"] if tcp else cmd, cpu)
    error = ""
    for attempt in range(RETRIES):
        proc = client.run(cmd, timeout=seconds + 30)
        text = proc.stdout + proc.stderr
        pcts = {float(q): float(v) for q, v in _PCT.findall(text)}
        got = _VALID.search(text)
        if proc.returncode == 0 and 50.0 in pcts and got and int(got.group(1)) > 0:
            avg = _AVG.search(text)
            return {"tool": "sockperf", "protocol": "tcp" if tcp else "udp",
                    "seconds": seconds, "p50_us": pcts[50.0], "p99_us": pcts.get(99.0),
                    "avg_us": float(avg.group(1)) if avg else None,
                    "messages": int(got.group(1)), "raw": text[-4000:]}
        error = (text.strip().splitlines() or [f"rc={proc.returncode}"])[-1]
        time.sleep(0.3 * (attempt + 1))
    raise MeasureError(f"sockperf {'tcp' if tcp else 'udp'} {client.label} -> {target}: {error}")


def ping(client: Endpoint, target: str, *, count: int = 20, interval: float = 0.01
         ) -> dict[str, Any]:
    """ICMP echo round trips (µs): median, min, max, loss."""
    proc = client.run(["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
                       target], timeout=count * (interval + 1) + 10)
    rtts = [float(t) * 1000 for t in _PING.findall(proc.stdout)]
    if not rtts:
        raise MeasureError(f"ping {client.label} -> {target}: no replies "
                           f"({(proc.stderr or proc.stdout).strip()[-200:]})")
    return {"tool": "ping", "count": count, "p50_us": statistics.median(rtts),
            "min_us": min(rtts), "max_us": max(rtts), "loss": 1 - len(rtts) / count}


# -- statistics -----------------------------------------------------------------------------
def summary(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median, min, max of the repeats that produced a value."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}
