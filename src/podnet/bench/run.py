"""Running the matrix: build the labs, measure round by round, tear everything down.

Why rounds over all paths (shuffled after the first) rather than path after path: the
machine is shared, and a burst of someone else's load then hits every path a little
instead of one path a lot, so the ratios between paths hold. Every namespace lives
under one prefix; labs are removed by their own teardown, and a final sweep removes
anything else under the prefix, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fnmatch
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from podnet.bench import env, results, runners
from podnet.bench.endpoint import Endpoint
from podnet.bench.runners import MeasureError, Pinning
from podnet.bench.scenarios import BUILDERS, CATALOGUE, GROUPS, Unavailable, Wiring
from podnet.errors import IN_USE, INVALID_CONFIG, PodnetError

FULL_SECONDS, FULL_REPEATS = 10, 3
QUICK_SECONDS, QUICK_REPEATS = 2, 1


@dataclass
class Settings:
    quick: bool = False
    seconds: int = FULL_SECONDS
    repeats: int = FULL_REPEATS
    pin: bool = False
    only: str | None = None
    prefix: str = ""
    seed: int = 2015

    @classmethod
    def make(cls, *, quick: bool = False, seconds: int | None = None,
             repeats: int | None = None, pin: bool = False, only: str | None = None,
             prefix: str | None = None) -> Settings:
        s = cls(quick=quick, pin=pin, only=only, prefix=prefix or "pb" + secrets.token_hex(2),
                seconds=seconds or (QUICK_SECONDS if quick else FULL_SECONDS),
                repeats=repeats or (QUICK_REPEATS if quick else FULL_REPEATS))
        if s.seconds < 1 or s.repeats < 1:
            raise PodnetError(INVALID_CONFIG, "--seconds and --repeats must be at least 1")
        if not s.prefix.isalnum() or not s.prefix[0].isalpha() or len(s.prefix) > 12:
            raise PodnetError(INVALID_CONFIG, "bad namespace prefix", s.prefix)
        return s


def selected(only: str | None) -> set[str]:
    """Path names matching --only (comma-separated globs or substrings)."""
    names = [p.name for p in CATALOGUE]
    if not only:
        return set(names)
    pats = [p.strip() for p in only.split(",") if p.strip()]
    return {n for n in names if any(fnmatch.fnmatch(n, p) or p in n for p in pats)}


def _sweep(prefix: str) -> None:
    """Remove every namespace under the run's prefix (what lab teardown did not)."""
    from podnet.kernel import netns

    for name in netns.list_named():
        if name.startswith(prefix):
            with contextlib.suppress(Exception):
                netns.remove(name)


Progress = Callable[[str, int], None]  # (description, steps done now)


class Bench:
    """One run of the matrix; `run()` returns the results.json document."""

    def __init__(self, settings: Settings, progress: Progress | None = None) -> None:
        self.s = settings
        self.progress = progress or (lambda desc, n: None)
        self.runs: list[dict[str, Any]] = []
        self.statuses: dict[str, tuple[str, str]] = {}
        self.infos: dict[str, dict[str, Any]] = {}
        self.wiring: dict[str, Wiring] = {}
        self.pin = Pinning()

    def plan(self) -> tuple[list[str], set[str]]:
        """(groups to build, paths selected) — also the progress bar's size."""
        chosen = selected(self.s.only)
        groups = [g for g in GROUPS if any(p.group == g and p.name in chosen for p in CATALOGUE)]
        return groups, chosen

    def steps(self) -> int:
        groups, chosen = self.plan()
        return len(groups) + len(chosen) * self.s.repeats + 1

    def run(self) -> dict[str, Any]:
        from podnet.kernel import netns

        started = time.time()
        groups, chosen = self.plan()
        if any(n.startswith(self.s.prefix) for n in netns.list_named()):
            raise PodnetError(IN_USE, f"namespaces named {self.s.prefix}* already exist",
                              "pick another --prefix or remove them")
        for p in CATALOGUE:
            if p.name not in chosen:
                self.statuses[p.name] = ("skipped", f"not selected by --only {self.s.only}")
        local = Endpoint("local", "127.0.0.1")
        self.progress("recording the environment", 0)
        machine = env.machine(local)
        if self.s.pin:
            self.pin = Pinning.on(machine.get("cpus") or 1)
        with contextlib.ExitStack() as stack:
            stack.callback(_sweep, self.s.prefix)
            for g in groups:
                self.progress(f"building lab: {g}", 1)
                self._build(g, stack, chosen)
            todo = [p.name for p in CATALOGUE if p.name in self.wiring]
            for rnd in range(self.s.repeats):
                order = list(todo)
                if rnd:
                    random.Random(self.s.seed + rnd).shuffle(order)
                for name in order:
                    self.progress(f"round {rnd + 1}/{self.s.repeats}: {name}", 0)
                    self._measure(name, self.wiring[name], rnd)
                    self.progress(f"round {rnd + 1}/{self.s.repeats}: {name}", 1)
            for name in todo:
                self.statuses.setdefault(name, ("measured", ""))
            self.progress("tearing down", 0)
        self.progress("done", 1)
        settings = asdict(self.s)
        settings["pinning"] = asdict(self.pin)
        load = runners.summary([r.get("loadavg1") for r in self.runs if r["kind"] == "load"])
        load["busy"] = (load["median"] or 0) > (machine.get("cpus") or 1)
        return results.assemble(settings, {"machine": machine, "load": load}, self.statuses,
                                self.infos, self.runs, started, time.time())

    # -- building -------------------------------------------------------------------------
    def _build(self, group: str, stack: contextlib.ExitStack, chosen: set[str]) -> None:
        names = [p.name for p in CATALOGUE if p.group == group and p.name in chosen]
        ports = (runners.IPERF_PORT, runners.SOCKPERF_PORT)
        t0 = time.monotonic()
        try:
            wiring = BUILDERS[group](self.s.prefix, stack, ports)
        except Unavailable as exc:
            for n in names:
                self.statuses[n] = ("unavailable", str(exc))
            return
        except (PodnetError, OSError, RuntimeError, AssertionError) as exc:
            for n in names:
                self.statuses[n] = ("failed", f"building the {group} lab: {exc}")
            return
        took = round(time.monotonic() - t0, 2)
        for n in names:
            if n not in wiring:
                self.statuses[n] = ("failed", f"the {group} lab did not provide {n}")
                continue
            w = wiring[n]
            self.wiring[n] = w
            self.infos[n] = {"client": w.client.label, "server": w.server.label,
                             "target": w.target, "streams": list(w.streams),
                             "lab_build_s": took, **w.notes}

    # -- measuring ------------------------------------------------------------------------
    def _record(self, name: str, rnd: int, kind: str, fn: Callable[[], dict[str, Any]],
                **extra: Any) -> None:
        try:
            self.runs.append({"path": name, "round": rnd, "kind": kind, **extra, **fn()})
        except (MeasureError, OSError, RuntimeError) as exc:
            self.runs.append({"path": name, "round": rnd, "kind": kind, **extra,
                              "error": str(exc)})

    def _measure(self, name: str, w: Wiring, rnd: int) -> None:
        s, pin = self.s, self.pin
        around = w.around() if w.around else contextlib.nullcontext("")
        self._record(name, rnd, "load", lambda: env.load(w.client))
        try:
            with runners.servers(w.server, pin), around as how:  # servers first: probed
                if how:
                    self.infos[name]["nat"] = how
                if rnd == 0:
                    self.infos[name]["environment"] = {
                        "client": env.interface(w.client, w.target),
                        "server": env.interface(w.server, w.client.address)}
                    self._record(name, rnd, "warmup", lambda: runners.ping(
                        w.client, w.target, count=10))
                    if not s.quick:
                        self._record(name, rnd, "warmup", lambda: runners.iperf3(
                            w.client, w.target, seconds=1, cpu=pin.client_tput))
                self._record(name, rnd, "icmp", lambda: runners.ping(
                    w.client, w.target, count=10 if s.quick else 50))
                for n in w.streams:
                    self._record(name, rnd, "iperf3", lambda n=n: runners.iperf3(
                        w.client, w.target, seconds=s.seconds, streams=n,
                        cpu=pin.client_tput), streams=n)
                self._record(name, rnd, "tcp_rr", lambda: runners.sockperf(
                    w.client, w.target, seconds=s.seconds, tcp=True, cpu=pin.client_rr))
                if not s.quick:
                    self._record(name, rnd, "udp_rr", lambda: runners.sockperf(
                        w.client, w.target, seconds=s.seconds, tcp=False, cpu=pin.client_rr))
        except (MeasureError, OSError, RuntimeError, PodnetError) as exc:
            self.runs.append({"path": name, "round": rnd, "kind": "setup", "error": str(exc)})
