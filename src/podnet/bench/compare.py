"""`podnet bench compare A.json B.json`: two runs side by side, with B ÷ A per figure.

Why ratios of ratios are printed too: two runs on a shared machine differ in absolute
speed; whether an observation holds in both is what a comparison should show.
"""

from __future__ import annotations

import json
from typing import Any

from podnet.bench.report import Table, _f, verdict
from podnet.bench.results import SCHEMA
from podnet.errors import INVALID_CONFIG, NOT_FOUND, PodnetError


def load(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise PodnetError(NOT_FOUND, f"no such results file: {path}") from None
    except ValueError as exc:
        raise PodnetError(INVALID_CONFIG, f"{path} is not JSON", str(exc)) from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise PodnetError(INVALID_CONFIG, f"{path} is not a podnet bench results file",
                          f"expected schema {SCHEMA}")
    return doc


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.2f}" if a and b is not None else "-"


def tables(a: dict[str, Any], b: dict[str, Any]) -> list[Table]:
    pa = {p["name"]: p for p in a["paths"]}
    rows = []
    for p in b["paths"]:
        q = pa.get(p["name"], {})
        rows.append([p["name"], _f(q.get("gbps")), _f(p.get("gbps")),
                     _ratio(q.get("gbps"), p.get("gbps")), _f(q.get("gbps_4streams")),
                     _f(p.get("gbps_4streams")),
                     _ratio(q.get("gbps_4streams"), p.get("gbps_4streams")),
                     _f(q.get("rr_latency_us"), 1), _f(p.get("rr_latency_us"), 1),
                     _ratio(q.get("rr_latency_us"), p.get("rr_latency_us"))])
    paths = ("Paths: A vs B", ["path", "A Gbit/s", "B Gbit/s", "B÷A", "A 4 str", "B 4 str",
                               "B÷A", "A RR µs", "B RR µs", "B÷A"], rows,
             [f"A: {a['settings'].get('prefix')} ({a['environment']['machine'].get('kernel')}),"
              f" B: {b['settings'].get('prefix')} "
              f"({b['environment']['machine'].get('kernel')})"])
    obs_rows = []
    oa = {o["id"]: o for o in a["observations"]}
    for o in b["observations"]:
        ca = {c["what"]: c for c in oa.get(o["id"], {}).get("comparisons", [])}
        for c in o["comparisons"]:
            x = ca.get(c["what"], {"measured": None, "reproduced": None})
            obs_rows.append([f"{o['id']}. {c['what']}", _f(c["study"]), _f(x["measured"]),
                             _f(c["measured"]), verdict(x), verdict(c)])
    obs = ("Observations: A vs B", ["comparison", "study", "A", "B", "A same direction",
                                    "B same direction"], obs_rows, [])
    return [paths, obs]


def print_compare(a: dict[str, Any], b: dict[str, Any], console: Any) -> None:
    from rich.table import Table as RichTable

    for title, cols, rows, notes in tables(a, b):
        t = RichTable(title=title, title_justify="left")
        for i, c in enumerate(cols):
            t.add_column(c, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        for n in notes:
            console.print(f"  [dim]{n}[/dim]")
