"""PNG charts of a results document (matplotlib, no display needed).

throughput.png  Gbit/s per path (1 and 4 streams, min–max whiskers), the study's
                Gbit/s as reference marks where its table has the path.
latency.png     TCP request/response p50 per path; the study gave latency only as
                ratios, so its marks are "the study's ratio applied to our baseline
                path" (e.g. VM-flat mark = our server-flat × 3.5).
observations.png every comparison's ratio, ours beside the study's, around 1.0.
"""

from __future__ import annotations

import os
from typing import Any

from podnet.bench import study

OURS = "#2b6cb0"
OURS_LIGHT = "#90cdf4"
STUDY = "#c53030"


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _measured(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in doc["paths"] if p["status"] == "measured"]


def _err(p: dict[str, Any], key: str) -> tuple[float, float]:
    mid, lo, hi = p.get(key), p.get(f"{key}_min"), p.get(f"{key}_max")
    if mid is None or lo is None or hi is None:
        return (0.0, 0.0)
    return (mid - lo, hi - mid)


def study_gbps_marks() -> dict[str, float]:
    marks: dict[str, float] = {}
    for _title, figures, cells, _same in study.TABLE.values():
        for col in study.COLUMNS:
            marks.setdefault(cells[col], figures[col])
    return marks


def study_latency_marks(paths: dict[str, dict[str, Any]]) -> dict[str, float]:
    marks: dict[str, float] = {}
    for _id, _title, comps, _says in study.OBSERVATIONS:
        for c in comps:
            base = (paths.get(c.den) or {}).get("rr_latency_us")
            if c.metric == "rr_latency_us" and c.study is not None and base:
                marks.setdefault(c.num, base * c.study)
    return marks


def throughput(doc: dict[str, Any], path: str) -> None:
    plt = _plt()
    ps = _measured(doc)
    marks = study_gbps_marks()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(ps) + 1.6))
    ys = list(range(len(ps)))
    one = [p["gbps"] or 0 for p in ps]
    four = [p["gbps_4streams"] or 0 for p in ps]
    ax.barh([y + 0.2 for y in ys], one, height=0.4, color=OURS, label="ours, 1 stream",
            xerr=list(zip(*[_err(p, "gbps") for p in ps], strict=True)) if ps else None)
    ax.barh([y - 0.2 for y in ys], four, height=0.4, color=OURS_LIGHT, label="ours, 4 streams",
            xerr=list(zip(*[_err(p, "gbps_4streams") for p in ps], strict=True)) if ps else None)
    sx = [(marks[p["name"]], y + 0.2) for y, p in zip(ys, ps, strict=True) if p["name"] in marks]
    if sx:
        ax.scatter([x for x, _ in sx], [y for _, y in sx], marker="D", color=STUDY, zorder=3,
                   label="study 2015 (Gbit/s, 1 stream)")
    ax.set_yticks(ys, [p["name"] for p in ps])
    ax.invert_yaxis()
    ax.set_xlabel("Gbit/s")
    ax.set_title("Throughput per path (iperf3)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def latency(doc: dict[str, Any], path: str) -> None:
    plt = _plt()
    ps = [p for p in _measured(doc) if p.get("rr_latency_us") is not None]
    marks = study_latency_marks({p["name"]: p for p in doc["paths"]})
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(ps) + 1.6))
    ys = list(range(len(ps)))
    ax.barh(ys, [p["rr_latency_us"] for p in ps], height=0.6, color=OURS,
            label="ours, TCP RR p50",
            xerr=list(zip(*[_err(p, "rr_latency_us") for p in ps], strict=True)) if ps else None)
    sx = [(marks[p["name"]], y) for y, p in zip(ys, ps, strict=True) if p["name"] in marks]
    if sx:
        ax.scatter([x for x, _ in sx], [y for _, y in sx], marker="D", color=STUDY, zorder=3,
                   label="study's ratio × our baseline path")
    ax.set_yticks(ys, [p["name"] for p in ps])
    ax.invert_yaxis()
    ax.set_xlabel("µs (sockperf ping-pong, half round trip)")
    ax.set_title("Request/response latency per path")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def observations(doc: dict[str, Any], path: str) -> None:
    plt = _plt()
    comps = [(o["id"], c) for o in doc["observations"] for c in o["comparisons"]]
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(comps) + 1.6))
    ys = list(range(len(comps)))
    ratios = [c["measured"] if c["measured"] else float("nan") for _, c in comps]
    # bars grow from 1.0 (no change) towards the ratio, left for less, right for more
    ax.barh(ys, [r - 1 for r in ratios], left=1.0, height=0.6, color=OURS, label="ours")
    sx = [(c["study"], y) for y, (_, c) in zip(ys, comps, strict=True) if c["study"] is not None]
    ax.scatter([x for x, _ in sx], [y for _, y in sx], marker="D", color=STUDY, zorder=3,
               label="study 2015")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [f"{i}. {c['what']}" for i, c in comps], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("ratio (log scale; 1 = no change)")
    ax.set_title("The six observations: ours vs the study")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_all(doc: dict[str, Any], out: str) -> list[str]:
    files = []
    for name, fn in (("throughput.png", throughput), ("latency.png", latency),
                     ("observations.png", observations)):
        target = os.path.join(out, name)
        fn(doc, target)
        files.append(target)
    return files
