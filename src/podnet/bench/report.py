"""Showing a results document: rich tables for the terminal, the same tables as Markdown,
and the files `--out DIR` writes (results.json, report.md, PNG charts).

Why one list of rows feeds both renderers: the terminal and report.md must never tell
two stories; each table is built once as (title, columns, rows) and rendered twice.
"""

from __future__ import annotations

import json
import os
from typing import Any

from podnet.bench import study
from podnet.bench.results import NOISE

Table = tuple[str, list[str], list[list[str]], list[str]]  # title, columns, rows, notes


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _range(p: dict[str, Any], key: str, digits: int = 2) -> str:
    lo, hi = p.get(f"{key}_min"), p.get(f"{key}_max")
    if lo is None or hi is None or p.get("repeats", 0) < 2:
        return ""
    return f" ({lo:.{digits}f}–{hi:.{digits}f})"


def verdict(c: dict[str, Any]) -> str:
    if c["reproduced"] is None:
        return "not measured"
    word = "yes" if c["reproduced"] else "no"
    if c["measured"] is not None and abs(c["measured"] - 1) < NOISE:
        word += " (within noise)"
    return word


def study_table(doc: dict[str, Any]) -> Table:
    cols = ["path"]
    for c in study.COLUMNS:
        cols += [f"{study.COLUMN_TITLES[c]} study", f"{study.COLUMN_TITLES[c]} ours"]
    rows, notes = [], []
    for row in doc["table"]:
        cells = [row["title"] + (" †" if row["same_path_all_columns"] else "")]
        for c in study.COLUMNS:
            cell = row["cells"][c]
            ours = _f(cell["gbps"]) if cell["status"] == "measured" else cell["status"]
            cells += [_f(cell["study_gbps"]), ours]
            if cell["status"] not in ("measured",) and cell["reason"] \
                    and cell["reason"] not in notes:
                notes.append(cell["reason"])
        rows.append(cells)
    notes.insert(0, "Gbit/s, one TCP stream. Study: 2015, 10 GbE hardware; ours: this "
                 "machine, veth pairs in namespaces. Compare shapes and ratios, not sizes.")
    notes.insert(1, "† one path in every column (lo / the pod bridge never see the network "
                 "between hosts); the study measured it inside VMs of each network type.")
    return "The study's table, with this machine's figures beside it", cols, rows, notes


def paths_table(doc: dict[str, Any]) -> Table:
    cols = ["path", "Gbit/s 1 stream", "4 streams", "TCP RR p50 µs", "p99 µs",
            "UDP RR p50 µs", "ICMP RTT µs", "MTU", "status"]
    rows: list[list[str]] = []
    reasons: list[str] = []
    for p in doc["paths"]:
        mtu = ((p.get("environment") or {}).get("client") or {}).get("mtu")
        status = p["status"]
        if status != "measured" and p["reason"]:
            if p["reason"] not in reasons:
                reasons.append(p["reason"])
            status += f" [{reasons.index(p['reason']) + 1}]"
        rows.append([p["name"], _f(p["gbps"]) + _range(p, "gbps"),
                     _f(p["gbps_4streams"]) + _range(p, "gbps_4streams"),
                     _f(p["rr_latency_us"], 1) + _range(p, "rr_latency_us", 1),
                     _f(p["rr_latency_p99_us"], 1), _f(p["udp_rr_latency_us"], 1),
                     _f(p["icmp_rtt_us"], 0), str(mtu or "-"), status])
    s = doc["settings"]
    notes = [f"median of {s['repeats']} round(s) (min–max in brackets), {s['seconds']} s "
             f"runs; sockperf latency is half the round trip; CPU pinning "
             f"{'on' if s['pin'] else 'off'}."]
    nat = {p.get("nat") for p in doc["paths"] if p.get("nat")}
    notes += [f"cross-host-vxlan-dnat: {n}; ICMP is not DNAT'ed" for n in sorted(nat)]
    notes += [f"[{i}] {r}" for i, r in enumerate(reasons, start=1)]
    return "Every path", cols, rows, notes


def observation_tables(doc: dict[str, Any]) -> list[Table]:
    out = []
    for obs in doc["observations"]:
        rows = [[c["what"], _f(c["study"]), _f(c["measured"]), verdict(c)]
                for c in obs["comparisons"]]
        out.append((f"Observation {obs['id']}: {obs['title']}",
                    ["comparison", "study", "ours", "same direction"], rows,
                    [obs["study_says"], *obs["notes"]]))
    return out


def environment_lines(doc: dict[str, Any]) -> list[str]:
    m = doc["environment"]["machine"]
    load = doc["environment"].get("load") or {}
    lines = []
    if load.get("median") is not None:
        lines.append(f"1-min load average before each measurement: median {load['median']:.1f} "
                     f"(min {load['min']:.1f}, max {load['max']:.1f}) on {m.get('cpus')} CPUs")
    if load.get("busy"):
        lines.append("WARNING: the machine was busy with other work (load above its CPU "
                     "count): this run's ratios are unreliable; re-run when it is idle, "
                     "or with more --repeats")
    return lines + [f"kernel {m.get('kernel')}, {m.get('cpus')} CPUs ({m.get('cpu_model')}), "
            f"{m.get('iperf3')}, sockperf {m.get('sockperf')}; offloads via {m.get('ethtool')}",
            f"run took {doc['duration_s']} s; namespaces under prefix "
            f"{doc['settings']['prefix']}"]


def all_tables(doc: dict[str, Any]) -> list[Table]:
    return [study_table(doc), *observation_tables(doc), paths_table(doc)]


# -- renderers ----------------------------------------------------------------------------------
def print_report(doc: dict[str, Any], console: Any) -> None:
    from rich.table import Table as RichTable

    if (doc["environment"].get("load") or {}).get("busy"):
        console.print("[bold red]The machine was busy with other work during this run "
                      "(see the load average below): read its ratios with care.[/bold red]")
    for title, cols, rows, notes in all_tables(doc):
        t = RichTable(title=title, title_justify="left", show_lines=False)
        for i, c in enumerate(cols):
            t.add_column(c, justify="left" if i == 0 or c == "status" else "right",
                         overflow="fold")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        for n in notes:
            console.print(f"  [dim]{n}[/dim]")
    for line in environment_lines(doc):
        console.print(f"[dim]{line}[/dim]")


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# podnet bench: the 2015 study's evaluation on this machine", ""]
    lines += [f"- {x}" for x in environment_lines(doc)]
    lines.append("")
    for title, cols, rows, notes in all_tables(doc):
        lines += [f"## {title}", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        lines.append("")
        lines += [f"- {n}" for n in notes]
        lines.append("")
    lines += ["Charts: throughput.png, latency.png, observations.png.", ""]
    return "\n".join(lines)


def write(doc: dict[str, Any], out: str) -> list[str]:
    """results.json, report.md and the charts into `out`; returns the files written."""
    from podnet.bench import charts

    os.makedirs(out, exist_ok=True)
    files = [os.path.join(out, "results.json"), os.path.join(out, "report.md")]
    with open(files[0], "w") as fh:
        json.dump(doc, fh, indent=1)
    with open(files[1], "w") as fh:
        fh.write(markdown(doc))
    files += charts.write_all(doc, out)
    return files
