"""The funnel: how many pairs are left at each stage, from the pool's urls to each subset's training run.

pool (metadata rows) -> downloaded (failures by reason, from the shards' stats) -> scored (pool
members: decoded images) -> every step of each subset's spec (the counts its record keeps, and the
filter's one-line summary: decontaminate's exact and near copies apart, the threshold a cut came to) ->
resharded (``filtered/NAME/meta.json``) -> trained (``runs/*/summary.json`` of runs on that subset).
Each row is a bar as a share of the first stage that has a count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poolsieve.core.formats import STATUS_SUCCESS, read_json
from poolsieve.core.shown_text import for_html
from poolsieve.core.workspace import Workspace


@dataclass
class Row:
    stage: str
    count: int | None
    detail: str = ""
    level: int = 0  # indentation: 0 pool-wide, 1 a subset, 2 a step of a subset's spec


def runs_by_subset(summary: dict[str, Any]) -> dict[str, list[str]]:
    """Subset name -> the runs trained on its reshard (a ``filtered/NAME`` data folder, or the run's name)."""
    out: dict[str, list[str]] = {}
    for run, info in (summary.get("runs") or {}).items():
        names = {Path(str(d)).name for d in info.get("data") or [] if Path(str(d)).parent.name == "filtered"}
        for name in names or {run}:
            out.setdefault(name, []).append(run)
    return out


def _threshold(step: dict[str, Any]) -> str:
    """``threshold 0.902`` when the step recorded the threshold it cut at, else empty."""
    value = (step.get("details") or {}).get("threshold")
    return f"threshold {value:.4g}" if isinstance(value, (int, float)) else ""


def _detail(step: dict[str, Any]) -> str:
    """The filter's one-line summary of a step (decontaminate: ``177 exact (sha256), 3 near (...)``), else
    the threshold it cut at."""
    summary = (step.get("details") or {}).get("summary")
    return summary if isinstance(summary, str) else _threshold(step)


def _number(value: Any) -> str:
    return f"{value:,.3g}" if isinstance(value, float) else str(value)


def funnel_rows(ws: Workspace, summary: dict[str, Any], records: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    if "metadata" in summary:
        rows.append(Row("pool (metadata rows)", summary["metadata"]["rows"],
                        f"{summary['metadata']['files']} parquet file(s)"))
    if "shards" in summary:
        s = summary["shards"]
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in list(s["failures_by_reason"].items())[:6])
        rows.append(Row("downloaded", s["successes"], f"of {s['urls']:,} urls in {s['shards']} shard(s)"
                        + (f"; failed: {reasons}" if reasons else "")))
    if "scores" in summary:
        status = summary["scores"]["status"]
        others = ", ".join(f"{k}: {v:,}" for k, v in status.items() if k != STATUS_SUCCESS)
        rows.append(Row("scored (pool members)", status.get(STATUS_SUCCESS, summary["scores"]["rows"]),
                        f"{summary['scores']['rows']:,} rows" + (f"; {others}" if others else "")))
    trained = runs_by_subset(summary)
    for name, sub in (summary.get("subsets") or {}).items():
        record = records.get(name) or {}
        whole = [s for s in record.get("steps") or [] if isinstance(s, dict) and s.get("step") == record.get("expression")]
        rows.append(Row(f"subset {name}", sub["uids"], (record.get("expression") or "")
                        + "".join(f"; {_detail(s)}" for s in whole[-1:] if _detail(s)), 1))
        # the steps of the spec, the last one (the whole expression: the subset itself) left out
        steps = [s for s in record.get("steps") or [] if isinstance(s, dict) and "count" in s
                 and s.get("step") != record.get("expression")]
        if steps:
            for step in steps:
                rows.append(Row(f"step {step.get('step')}", int(step["count"]),
                                ("reused" if step.get("reused") else _detail(step)), 2))
        meta_path = ws.filtered_dir(name) / "meta.json"
        if meta_path.exists():
            try:
                meta = read_json(meta_path)
                rows.append(Row(f"resharded {name}", int(meta.get("output_count") or 0),
                                f"{meta.get('output_shard_count')} shard(s); {meta.get('missing_unique_uids', 0):,} "
                                "uid(s) not found in the shards", 2))
            except Exception:  # noqa: BLE001 - an unreadable meta.json only leaves its row out
                pass
        for run in trained.get(name, []):
            info = summary["runs"][run]
            seen = info.get("samples_seen")
            rows.append(Row(f"trained {run}", info.get("dataset_size"),
                            f"{seen:,} samples seen ({_number(info.get('passes_over_data'))} passes)" if seen else
                            str(info.get("status", "")), 2))
    return rows


def funnel_html(rows: list[Row]) -> str:
    if not rows:
        return ""
    base = next((r.count for r in rows if r.count), 1) or 1
    out = ['<table class="funnel"><thead><tr><th>stage</th><th class="num">pairs</th><th class="num">share</th>'
           '<th class="bar-cell"></th><th>detail</th></tr></thead><tbody>']
    for r in rows:
        share = (r.count or 0) / base
        count = f"{r.count:,}" if r.count is not None else ""
        shown = f"{share:.1%}" if r.count is not None else ""
        out.append(f'<tr class="level{r.level}"><td>{for_html(r.stage)}</td><td class="num">{count}</td>'
                   f'<td class="num">{shown}</td><td class="bar-cell"><div class="bar" '
                   f'style="width:{min(share, 1.0) * 100:.1f}%"></div></td><td class="detail">{for_html(r.detail)}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)
