"""``report/index.html``: the workspace summary as one self-contained page with plots (inline SVG).

Plots: the distribution of every CLIP score column with each subset's share drawn over it, subset
sizes, and the evaluation results per subset. No plotting library and no network: the page opens
anywhere.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.formats import STATUS_SUCCESS, atomic_path, read_subset
from poolsieve.core.uids import UidSet, hex_to_keys
from poolsieve.core.workspace import Workspace

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")


def _histogram_svg(title: str, edges: np.ndarray, series: list[tuple[str, np.ndarray]], width: int = 640,
                   height: int = 220) -> str:
    """Overlaid step histograms (counts per bin) with a legend."""
    pad_l, pad_b, pad_t = 48, 28, 24
    top = max((float(c.max()) for _, c in series if len(c)), default=1.0) or 1.0
    plot_w, plot_h = width - pad_l - 8, height - pad_b - pad_t
    x = lambda v: pad_l + (v - edges[0]) / max(edges[-1] - edges[0], 1e-12) * plot_w  # noqa: E731
    y = lambda c: pad_t + plot_h - c / top * plot_h  # noqa: E731
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{pad_l}" y="15" font-size="13" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#999"/>']
    for i, (name, counts) in enumerate(series):
        pts = []
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
            pts += [f"{x(lo):.1f},{y(c):.1f}", f"{x(hi):.1f},{y(c):.1f}"]
        colour = _PALETTE[i % len(_PALETTE)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(pts)}"/>')
        parts.append(f'<text x="{pad_l + plot_w - 150}" y="{pad_t + 14 * (i + 1)}" font-size="11" '
                     f'fill="{colour}">{html.escape(name)}</text>')
    for v in (edges[0], (edges[0] + edges[-1]) / 2, edges[-1]):
        parts.append(f'<text x="{x(v):.1f}" y="{height - 8}" font-size="10" text-anchor="middle">{v:.3f}</text>')
    parts.append(f'<text x="4" y="{pad_t + 10}" font-size="10">{int(top)}</text></svg>')
    return "".join(parts)


def _bars_svg(title: str, items: list[tuple[str, float]], fmt: str = "{:,.0f}", width: int = 640) -> str:
    row, pad_l = 20, 160
    height = 30 + row * len(items)
    top = max((v for _, v in items), default=1.0) or 1.0
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="4" y="15" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for i, (name, v) in enumerate(items):
        yy = 26 + i * row
        w = (width - pad_l - 80) * v / top
        parts.append(f'<text x="4" y="{yy + 12}" font-size="11">{html.escape(name)}</text>')
        parts.append(f'<rect x="{pad_l}" y="{yy}" width="{w:.1f}" height="{row - 6}" '
                     f'fill="{_PALETTE[i % len(_PALETTE)]}"/>')
        parts.append(f'<text x="{pad_l + w + 4:.1f}" y="{yy + 12}" font-size="11">{fmt.format(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _score_plots(ws: Workspace, summary: dict[str, Any]) -> list[str]:
    import pyarrow.parquet as pq

    columns = list(summary.get("scores", {}).get("score_columns", {}))
    if not columns:
        return []
    tables = ws.score_tables()
    frames = [pq.read_table(p, columns=[c for c in ["uid", "status", *columns] if c in pq.read_schema(p).names])
              .to_pandas() for p in tables]
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    if "status" in df:
        df = df[df["status"] == STATUS_SUCCESS]
    keys = hex_to_keys(df["uid"].to_numpy())
    members = {name: UidSet.from_pairs(read_subset(ws.subset_path(name), allow_repeats=True)).isin(keys)
               for name in summary.get("subsets", {})}
    plots = []
    for col in columns:
        values = df[col].to_numpy(dtype=np.float64)
        ok = ~np.isnan(values)
        if not ok.any():
            continue
        edges = np.linspace(values[ok].min(), values[ok].max() + 1e-9, 41)
        series = [("pool", np.histogram(values[ok], edges)[0])]
        series += [(name, np.histogram(values[ok & mask], edges)[0]) for name, mask in members.items()]
        plots.append(_histogram_svg(col, edges, series))
    return plots


def write_report(ws: Workspace, summary: dict[str, Any]) -> Path:
    """Write ``report/index.html`` from an ``inspect_workspace`` summary; return its path."""
    body = [f"<h1>poolsieve workspace</h1><p><code>{html.escape(str(ws.root))}</code></p>"]
    if "shards" in summary:
        s = summary["shards"]
        body.append(f"<h2>Download</h2><p>{s['successes']:,} of {s['urls']:,} urls downloaded in "
                    f"{s['shards']} shard(s).</p>")
        if s["failures_by_reason"]:
            body.append(_bars_svg("failures by reason", list(s["failures_by_reason"].items())[:10]))
    if "scores" in summary:
        body.append("<h2>Scores</h2>")
        body += _score_plots(ws, summary)
    if "subsets" in summary:
        body.append("<h2>Subsets</h2>")
        body.append(_bars_svg("uids per subset", [(k, v["uids"]) for k, v in summary["subsets"].items()]))
    if "evals" in summary:
        body.append("<h2>Evaluation</h2><table><tr><th>subset</th><th>task</th><th>main metric</th></tr>")
        for name, tasks in summary["evals"].items():
            for task, value in tasks.items():
                shown = f"{value:.3f}" if isinstance(value, (int, float)) else html.escape(str(value))
                body.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(task)}</td><td>{shown}</td></tr>")
        body.append("</table>")
    body.append(f"<h2>Summary (JSON)</h2><pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>poolsieve report</title><style>"
            "body{font-family:sans-serif;max-width:900px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}pre{background:#f6f6f6;padding:8px;overflow:auto}"
            "</style></head><body>" + "".join(body) + "</body></html>")
    out = ws.report_dir / "index.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return out
