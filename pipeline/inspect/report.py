"""``report/index.html``: a page a data curator keeps open, and ``report/summary.json`` beside it.

Sections: the funnel (pool -> downloaded -> scored -> each subset's steps -> resharded -> trained);
score distributions per column with each subset's part and its threshold, and a scatter of two scores;
per subset, grids of kept and of dropped examples (thumbnails from the shards, caption, scores, the
pool's labels, why a pair went) and, for a labelled pool, what share of each label it keeps; training
loss curves; the evaluation side by side. Everything is inline (SVG, CSS, JPEG data URIs): the page
opens offline and from a copied folder. Plots and grids use a seeded sample of the pool
(``report_data.MAX_ROWS`` members), so a 12.8M-row pool renders in seconds. No absolute path is
written into either file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.formats import STATUS_SUCCESS, atomic_path
from poolsieve.core.owned_folders import check_owned
from poolsieve.core.shown_text import for_html
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.inspect import charts
from poolsieve.pipeline.inspect.evaluation import eval_section
from poolsieve.pipeline.inspect.funnel import funnel_html, funnel_rows
from poolsieve.pipeline.inspect.grids import (
    attach_reference_images,
    cards_from_rows,
    grid_html,
    load_thumbnails,
)
from poolsieve.pipeline.inspect.reasons import Explainer, reference_matches, score_thresholds, short_column
from poolsieve.pipeline.inspect.report_data import (
    CLEAN_LABELS,
    PoolSample,
    bin_count,
    dense_window,
    label_text,
    label_values,
    primary_label,
    sample_pool,
    score_range,
    seeded_rng,
    subset_records,
)
from poolsieve.pipeline.inspect.results import loss_chart, runs_table
from poolsieve.pipeline.inspect.user_labels import read_labels

SUMMARY_NAME = "summary.json"
PAGE_NAME = "index.html"
GRID_SIZE = 12
# a close-up histogram when half the pool lies in under this share of the plotted range (a normal
# distribution: 0.26, so only a narrow peak with long tails gets one)
ZOOM_BELOW = 0.12
SCATTER_POINTS = 3000
MAX_SCATTER_GROUPS = 10  # legend entries of the scatter's colours by label (the rest "(other)")
MAX_OVERLAID = 3  # more subsets than this (or colours too close) get small multiples instead of one chart
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
header{background:#24292f;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header a{color:#9ecbff}nav a{margin-right:14px}
h2{margin:28px 0 8px;padding-bottom:4px;border-bottom:1px solid #d0d7de;font-size:18px}
h3{margin:22px 0 6px;font-size:16px}h4{margin:12px 0 4px;font-size:14px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:4px 16px 14px;margin-top:16px}
.note{color:#57606a;font-size:12.5px;margin:2px 0 8px}
svg.chart{display:block;max-width:100%;height:auto;margin:8px 0;font-size:11px}
svg .chart-title{font-size:13px;font-weight:600}svg .axis-title{font-size:12px;fill:#24292f}
svg .tick-label{fill:#57606a}svg .grid{stroke:#e5e8eb}svg .plot-area{fill:none;stroke:#afb8c1}
svg .legend text{font-size:11.5px;fill:#24292f}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid #e5e8eb;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa}.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:700;background:#dafbe1}tr.group td{background:#f6f8fa;font-weight:600}
tr.group td.best{background:#aceebb}
table.funnel{width:100%}.funnel td:first-child{white-space:nowrap}.funnel .bar-cell{width:24%}.funnel .bar{height:12px;background:#4e79a7;border-radius:2px}
.funnel tr.level1 td:first-child{padding-left:22px;font-weight:600}.funnel tr.level2 td:first-child{padding-left:40px}
.funnel tr.level2 .bar{background:#a0bcd8}.funnel .detail{color:#57606a;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:10px}
.card{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:6px;background:#fff;font-size:11.5px}
.card img,.card .no-image{display:block;width:112px;height:112px;object-fit:contain;margin:0 auto 4px;
background:#f0f2f4}.card .no-image{line-height:112px;text-align:center;color:#8c959f}
.card .caption{overflow-wrap:anywhere}.card .score{color:#0969da}.card .label{color:#8250df}
.card .reason{color:#cf222e}.card.match{grid-column:span 2}.card .side{display:flex;gap:6px;justify-content:center}
.card .side img,.card .side .no-image{margin:0 0 2px}.card .which{text-align:center;color:#57606a;font-size:10.5px}
.card .not-stored{line-height:1.3;font-size:10.5px;padding:30px 6px;box-sizing:border-box;overflow-wrap:anywhere}.pair{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.scroll{overflow-x:auto;max-width:100%}
details summary{cursor:pointer;margin:10px 0 4px;color:#0969da}
.tasks td.score{min-width:128px}.tasks .interval{color:#57606a;font-size:11.5px}.tasks .metric{color:#57606a;font-size:11.5px}
.tasks tr.kind-own td:first-child{font-weight:600}.best-mark{font-size:10.5px;font-weight:600;color:#1a7f37}
.ci{position:relative;width:120px;height:10px;margin:3px 0 2px auto;background:#eef1f4;border-radius:2px}
.ci-range{position:absolute;top:2px;height:6px;background:#8fb5dc;border-radius:2px}
.ci-point{position:absolute;top:0;width:2px;height:10px;margin-left:-1px;background:#0b3d91}
.ci-chance{position:absolute;top:-2px;height:14px;border-left:1px dashed #cf222e}
figure.multiples{margin:14px 0}figure.multiples figcaption{font-size:13px;font-weight:600}
.multiples-legend{font-size:11.5px;color:#57606a;margin:2px 0 4px}.multiples-legend .swatch{display:inline-block;
width:16px;height:9px;margin:0 5px 0 12px;vertical-align:middle}.multiples-legend .swatch:first-child{margin-left:0}
.swatch.pool{border:1px solid #6e7781}.swatch.subset{background:linear-gradient(90deg,#4e79a7,#e15759,#59a14f);opacity:.6}
.swatch.threshold{border-top:2px dashed #57606a;height:0}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(272px,1fr));gap:4px 8px}
.panels svg.chart{margin:0}.chip{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:7px}
@media (max-width:900px){.pair{grid-template-columns:1fr}}
"""


def _portable(value: Any, root: str) -> Any:
    """``value`` with every path under the workspace made relative to it (the summary file travels)."""
    if isinstance(value, dict):
        return {k: _portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, root) for v in value]
    if isinstance(value, str) and (value == root or value.startswith(root + "/")):
        return value[len(root) + 1:] or "."
    return value


def _histogram(sample: PoolSample, col: str, values: np.ndarray, ok: np.ndarray, lo: float, hi: float,
               subsets: list[str], marks: list[tuple[str, float]], zoom: bool) -> str:
    """The pool's and each subset's share per bin of ``col`` over ``[lo, hi]``. The whole range puts
    the few values beyond it (under 0.5% each side) in the end bins; a close-up leaves them out."""
    n = max(len(values), 1)
    if zoom:
        ok = ok & (values >= lo) & (values <= hi)
    edges = np.linspace(lo, hi, bin_count(values[ok], lo, hi) + 1)
    clipped = np.clip(values, lo, hi)

    def share(mask: np.ndarray) -> np.ndarray:
        return np.histogram(clipped[ok & mask], edges)[0] * 100.0 / n

    title = (f"{col}: close-up where {ok.mean():.0%} of the pool lies" if zoom
             else f"{col}: distribution in the pool and in each subset")
    series = [charts.Series(name, share(sample.members[name])) for name in subsets]
    pool, x_title = share(np.ones(len(values), dtype=bool)), f"{short_column(col)} (cosine similarity)"
    if len(subsets) <= MAX_OVERLAID and charts.distinct_hues(subsets):
        return charts.histogram_svg(title, edges, pool, series, marks, x_title=x_title, y_title="share of pool (%)")
    kept = {name: f"keeps {sample.members[name].mean():.1%}" for name in subsets}
    return charts.small_multiples_html(title, edges, pool, series, kept, marks, short_column(col), "% of pool")


def _scores_section(sample: PoolSample, records: dict[str, dict[str, Any]]) -> list[str]:
    frame = sample.frame
    thresholds = score_thresholds(records)
    subsets = [n for n, m in sample.members.items() if 0 < m.sum() < len(m)]  # a subset of everything adds nothing
    out = []
    for col in sample.score_columns:
        values = frame[col].to_numpy(dtype=np.float64)
        ok = np.isfinite(values)
        if not ok.any():
            continue
        marks = [(name, v) for name, c, v in thresholds if c == col]
        lo, hi = score_range(values[ok], [v for _, v in marks])
        out.append(_histogram(sample, col, values, ok, lo, hi, subsets, marks, zoom=False))
        d_lo, d_hi = dense_window(values[ok], 0.5)
        if d_hi - d_lo < ZOOM_BELOW * (hi - lo):  # half the pool sits in a narrow peak: show it close up
            pad = (d_hi - d_lo) or 1e-3
            d_lo, d_hi = max(lo, d_lo - pad), min(hi, d_hi + pad)
            inside = [(name, v) for name, v in marks if d_lo <= v <= d_hi]
            out.append(_histogram(sample, col, values, ok, d_lo, d_hi, subsets, inside, zoom=True))
    if len(sample.score_columns) >= 2:
        a, b = sample.score_columns[:2]
        rows = seeded_rng("scatter").permutation(len(frame))[:SCATTER_POINTS]
        label = primary_label(sample)
        if label is not None:
            groups = label_values(sample, label, MAX_SCATTER_GROUPS)[rows]
        elif subsets:
            inside = sample.members[subsets[-1]][rows]
            groups = np.where(inside, f"in {subsets[-1]}", f"not in {subsets[-1]}")
        else:
            groups = np.full(len(rows), "pool")
        out.append(charts.scatter_svg(f"{short_column(a)} against {short_column(b)} ({len(rows):,} sampled pairs)",
                                      frame[a].to_numpy(dtype=np.float64)[rows],
                                      frame[b].to_numpy(dtype=np.float64)[rows], np.asarray(groups, dtype=object),
                                      short_column(a), short_column(b)))
    return out


def _label_table(sample: PoolSample) -> str:
    """For a labelled pool: per label value, the share of the sampled pairs each subset keeps; where the
    labels name clean pairs (``none``/``clean``), each subset's removal recall over all defects and its
    removal precision (the share of the pairs it removed that were defective)."""
    label = primary_label(sample)
    if label is None or not sample.members:
        return ""
    values = label_values(sample, label).astype(str)
    names = list(sample.members)
    out = [_labels_note(sample), '<p class="note">The share of each label\'s pairs that each subset keeps.</p>'
           '<div class="scroll">'
           '<table class="results labels"><thead><tr><th>' + for_html(label) + '</th><th class="num">pairs</th>'
           + "".join(f'<th class="num">{for_html(n)}</th>' for n in names) + "</tr></thead><tbody>"]
    uniq, counts = np.unique(values, return_counts=True)
    for value, count in sorted(zip(uniq, counts, strict=True), key=lambda vc: -vc[1]):
        rows = values == value
        cells = "".join(f'<td class="num">{sample.members[n][rows].mean():.0%}</td>' for n in names)
        out.append(f'<tr><td>{for_html(value)}</td><td class="num">{count:,}</td>{cells}</tr>')
    out.append("</tbody>")
    clean = np.isin(values, list(CLEAN_LABELS))
    if clean.any() and (~clean).any():  # removal figures: the share of defects removed, of removed that were defects
        out.append("<tfoot>")
        for title, figure in (("defects removed (recall)", _removal_recall),
                              ("removed that were defects (precision)", _removal_precision)):
            cells = "".join(f'<td class="num">{figure(sample.members[n], clean)}</td>' for n in names)
            out.append(f'<tr><th>{title}</th><td class="num">{int((~clean).sum()):,}</td>{cells}</tr>')
        out.append("</tfoot>")
    out.append("</table></div>")
    return "".join(out)


def _labels_note(sample: PoolSample) -> str:
    """Where the labels come from, when they are the user's own (``inspect --labels FILE``)."""
    user = sample.user_labels
    if user is None:
        return ""
    labelled = int(sample.frame[user.columns].notna().any(axis=1).sum())
    return (f'<p class="note">Labels from your file {for_html(user.file)} (column(s) '
            f'{for_html(", ".join(user.columns))}; {user.rows:,} rows): {labelled:,} of the {len(sample.frame):,} '
            "sampled pairs are labelled; the table counts the first column.</p>")


def _removal_recall(member: np.ndarray, clean: np.ndarray) -> str:
    return f"{(~member[~clean]).mean():.0%}"


def _removal_precision(member: np.ndarray, clean: np.ndarray) -> str:
    removed = ~member
    return f"{(~clean[removed]).mean():.0%}" if removed.any() else "-"


def _subset_sections(ws: Workspace, sample: PoolSample, records: dict[str, dict[str, Any]]) -> list[str]:
    frame = sample.frame
    scores = [(c, short_column(c)) for c in sample.score_columns]
    chosen: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, member in sample.members.items():
        rng = seeded_rng("grid", name)
        kept = np.sort(rng.permutation(np.flatnonzero(member))[:GRID_SIZE])
        dropped = np.sort(rng.permutation(np.flatnonzero(~member))[:GRID_SIZE])
        chosen.append((name, kept, dropped))
    rows = np.unique(np.concatenate([np.concatenate([k, d]) for _, k, d in chosen] or [np.zeros(0, dtype=np.int64)]))
    thumbs = load_thumbnails(ws, [(str(frame["shard"].iat[i]), str(frame["key"].iat[i]) if "key" in frame else "")
                                  for i in rows])
    named = sample.user_labels is not None and len(sample.shown_labels) > 1
    labels = {int(i): label_text(frame.iloc[int(i)], sample.shown_labels, named) for i in rows}
    out = []
    for name, kept, dropped in chosen:
        record = records.get(name) or {}
        member = sample.members[name]
        reasons = dict(zip(dropped.tolist(), Explainer(sample, records, dropped).dropped_reasons(name), strict=True))
        head = (f'<h3 id="subset-{for_html(name)}"><span class="chip" style="background:{charts.subset_colour(name)}">'
                f'</span>{for_html(name)}</h3>'
                f'<p class="note">{for_html(record.get("expression") or "")} · keeps {member.mean():.1%} of '
                f"the {len(member):,} sampled pool members</p>") + _reason_counts(sample, records, name)
        dropped_cards = cards_from_rows(frame, dropped, scores, labels, reasons)
        copies = reference_matches(record)
        if copies and "uid" in frame:
            uids = [str(frame["uid"].iat[int(i)]) for i in dropped]
            attach_reference_images(ws, dropped_cards, {j: copies[u] for j, u in enumerate(uids) if u in copies})
        grids = [grid_html(f"kept ({len(kept)} at random)", cards_from_rows(frame, kept, scores, labels), thumbs),
                 grid_html(f"dropped ({len(dropped)} at random)", dropped_cards, thumbs)]
        out.append(head + '<div class="pair">' + "".join(f"<div>{g}</div>" for g in grids) + "</div>")
    return out


def _reason_counts(sample: PoolSample, records: dict[str, dict[str, Any]], name: str) -> str:
    """Why the sampled pairs outside ``name`` went, counted by failed test (most common first)."""
    dropped = np.flatnonzero(~sample.members[name])
    if not len(dropped):
        return ""
    counts = Counter(Explainer(sample, records, dropped, generic=True).dropped_reasons(name))
    rows = "".join(f'<tr><td>{for_html(reason)}</td><td class="num">{n:,}</td>'
                   f'<td class="num">{n / len(dropped):.1%}</td></tr>' for reason, n in counts.most_common(8))
    more = f'<p class="note">and {len(counts) - 8} other combinations</p>' if len(counts) > 8 else ""
    return ('<table class="results reasons"><thead><tr><th>why pairs went</th><th class="num">pairs</th>'
            f'<th class="num">of dropped</th></tr></thead><tbody>{rows}</tbody></table>{more}')


def _references(ws: Workspace) -> str:
    refs = sorted(ws.references_dir.glob("*.npz")) if ws.references_dir.is_dir() else []
    if not refs:
        return ""
    items = "".join(f"<li>{for_html(p.stem)} ({p.stat().st_size / 1e6:.1f} MB)</li>" for p in refs)
    return f"<h3>Reference sets</h3><ul>{items}</ul>"


def write_report(ws: Workspace, summary: dict[str, Any], labels: Path | None = None) -> Path:
    """Write ``report/index.html`` and ``report/summary.json`` from an ``inspect_workspace`` summary, with
    the user's ``labels`` file (``inspect --labels``; what it holds goes into ``summary["labels"]``). A
    ``report/`` already there must be the report folder poolsieve wrote (``core/owned_folders.py``): a
    symlink, or a folder of other files, is refused in one line before anything is written."""
    check_owned(ws.report_dir, (SUMMARY_NAME, PAGE_NAME), inside=ws.root, what="report folder")
    root = str(ws.root)
    if labels is not None and "scores" not in summary:  # nothing sampled to label: the file is checked alone
        summary["labels"] = read_labels(labels, set()).summary()
    subsets = list(summary.get("subsets") or {})
    records = subset_records(ws, subsets)
    nav, body = [], []

    def section(anchor: str, title: str, parts: list[str]) -> None:
        parts = [p for p in parts if p]
        if parts:
            nav.append(f'<a href="#{anchor}">{for_html(title)}</a>')
            body.append(f'<section id="{anchor}"><h2>{for_html(title)}</h2>{"".join(parts)}</section>')

    section("funnel", "Funnel", [funnel_html(funnel_rows(ws, summary, records)), _references(ws)])
    if "scores" in summary:
        pool_rows = int(summary["scores"]["status"].get(STATUS_SUCCESS, summary["scores"]["rows"]))
        sample = sample_pool(ws, subsets, pool_rows, labels=labels)
        if sample.user_labels is not None:
            summary["labels"] = sample.user_labels.summary()
        how = ("every pool member" if sample.is_whole_pool else
               f"{len(sample.frame):,} of {sample.pool_rows:,} pool members from {sample.tables_read} of "
               f"{sample.tables_total} score tables, chosen with a fixed seed")
        note = f'<p class="note">Plots and examples use {how}.</p>'
        section("scores", "Scores", [note, *_scores_section(sample, records)])
        if sample.members:
            section("subsets", "Subsets: kept and dropped examples",
                    [note, _label_table(sample), *_subset_sections(ws, sample, records)])
    runs = summary.get("runs") or {}
    if runs:
        section("training", "Training", [loss_chart(ws.root, runs), runs_table(runs)])
    if summary.get("evals"):
        section("evaluation", "Evaluation", [eval_section(ws.root, list(summary["evals"]))])
    ws.report_dir.mkdir(parents=True, exist_ok=True)
    portable = _portable({**summary, "workspace": ws.root.name}, root)
    with atomic_path(ws.report_dir / SUMMARY_NAME) as tmp:
        tmp.write_text(json.dumps(portable, indent=2, default=str))
    title = f"poolsieve report: {ws.root.name}"
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{for_html(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{for_html(title)}</h1><nav>{''.join(nav)}"
            f'<a href="{SUMMARY_NAME}" id="summary-link">summary (JSON)</a></nav></header>'
            f"<main>{''.join(body)}</main></body></html>")
    out = ws.report_dir / PAGE_NAME
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return out
