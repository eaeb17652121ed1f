"""From raw runs to results.json: per-path summaries, the study's table, the six
observations. Pure functions over plain data, so `compare` and tests can use them too.

Why ratios come only from one run's paths: absolute speeds on a shared machine drift by
15% or more between runs, while two paths measured minutes apart, round-robin, drift
together. Every `measured` ratio here divides two medians of the same results file.
"""

from __future__ import annotations

from typing import Any

from podnet.bench import study
from podnet.bench.runners import summary
from podnet.bench.scenarios import CATALOGUE

SCHEMA = "podnet-bench/1"
NOISE = 0.05  # |ratio - 1| below this is shown as "within noise" in reports


def _values(runs: list[dict[str, Any]], path: str, kind: str, key: str,
            streams: int | None = None) -> list[float | None]:
    return [r.get(key) for r in runs if r.get("path") == path and r.get("kind") == kind
            and "error" not in r and (streams is None or r.get("streams") == streams)]


def _put(entry: dict[str, Any], key: str, values: list[float | None]) -> None:
    s = summary(values)
    entry[key], entry[f"{key}_min"], entry[f"{key}_max"] = s["median"], s["min"], s["max"]


def path_entry(name: str, title: str, group: str, status: str, reason: str,
               runs: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """One path: medians with min and max over the repeats, and how it was measured."""
    entry: dict[str, Any] = {"name": name, "title": title, "group": group, "status": status,
                             "reason": reason}
    _put(entry, "gbps", _values(runs, name, "iperf3", "gbps", 1))
    _put(entry, "gbps_4streams", _values(runs, name, "iperf3", "gbps", 4))
    _put(entry, "rr_latency_us", _values(runs, name, "tcp_rr", "p50_us"))
    _put(entry, "rr_latency_p99_us", _values(runs, name, "tcp_rr", "p99_us"))
    _put(entry, "udp_rr_latency_us", _values(runs, name, "udp_rr", "p50_us"))
    _put(entry, "udp_rr_latency_p99_us", _values(runs, name, "udp_rr", "p99_us"))
    _put(entry, "icmp_rtt_us", _values(runs, name, "icmp", "p50_us"))
    streams = sorted({r["streams"] for r in runs if r.get("path") == name
                      and r.get("kind") == "iperf3" and "error" not in r})
    entry["gbps_streams"] = {str(n): summary(_values(runs, name, "iperf3", "gbps", n))["median"]
                             for n in streams}
    entry["repeats"] = len({r["round"] for r in runs if r.get("path") == name
                            and r.get("kind") == "iperf3" and "error" not in r})
    errors = [r["error"] for r in runs if r.get("path") == name and "error" in r]
    entry["errors"] = errors
    entry.update(info)
    if status == "measured" and (entry["gbps"] is None or entry["rr_latency_us"] is None):
        entry["status"] = "failed"
        entry["reason"] = errors[0] if errors else "no successful run"
    return entry


def _metric(path: dict[str, Any] | None, metric: str) -> float | None:
    if not path or path.get("status") != "measured":
        return None
    if metric.startswith("streams:"):
        return (path.get("gbps_streams") or {}).get(metric.split(":", 1)[1])
    value = path.get(metric)
    return float(value) if value is not None else None


def _why_missing(path: dict[str, Any] | None, name: str) -> str:
    if path is None:
        return f"{name}: not in this run"
    return f"{name}: {path.get('status')} ({path.get('reason') or 'no value'})"


def observations(paths: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The six observations; each comparison {what, study, measured, unit, reproduced}."""
    out = []
    for oid, title, comps, study_says in study.OBSERVATIONS:
        comparisons, notes = [], []
        for c in comps:
            num = _metric(paths.get(c.num), c.metric)
            den = _metric(paths.get(c.den), c.den_metric or c.metric)
            measured = num / den if num is not None and den else None
            reproduced = None
            if measured is not None:
                reproduced = measured < 1 if c.expect == "down" else measured > 1
            else:
                missing = [_why_missing(paths.get(n), n) for n, v in
                           ((c.num, num), (c.den, den)) if v is None]
                notes.append(f"{c.what}: not measured: {'; '.join(dict.fromkeys(missing))}")
            comparisons.append({"what": c.what, "study": c.study, "measured": measured,
                                "unit": "ratio", "reproduced": reproduced})
        out.append({"id": oid, "title": title, "study_says": study_says,
                    "comparisons": comparisons, "notes": notes})
    return out


def table(paths: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's table (Gbit/s, 1 stream) with ours beside each cell."""
    rows = []
    for key, (title, figures, cell_paths, same) in study.TABLE.items():
        cells = {}
        for col in study.COLUMNS:
            p = paths.get(cell_paths[col]) or {}
            status = p.get("status", "absent")
            if same and col == "vlan" and (paths.get("vm-vlan") or {}).get("status") \
                    == "unavailable":  # the study measured these inside VLAN VMs
                status, reason, gbps = "unavailable", paths["vm-vlan"]["reason"], None
            else:
                reason, gbps = p.get("reason", ""), p.get("gbps")
            cells[col] = {"path": cell_paths[col], "study_gbps": figures[col], "gbps": gbps,
                          "status": status, "reason": reason}
        rows.append({"row": key, "title": title, "same_path_all_columns": same,
                     "cells": cells})
    return rows


def assemble(settings: dict[str, Any], environment: dict[str, Any],
             statuses: dict[str, tuple[str, str]], infos: dict[str, dict[str, Any]],
             runs: list[dict[str, Any]], started: float, finished: float
             ) -> dict[str, Any]:
    paths = [path_entry(p.name, p.title, p.group, *statuses.get(p.name, ("failed", "?")),
                        runs, infos.get(p.name, {})) for p in CATALOGUE]
    by_name = {p["name"]: p for p in paths}
    return {
        "schema": SCHEMA, "started": started, "finished": finished,
        "duration_s": round(finished - started, 1), "settings": settings,
        "environment": environment, "paths": paths, "table": table(by_name),
        "observations": observations(by_name), "runs": runs,
    }
