"""``poolsieve inspect``: what a workspace holds, stage by stage, on one screen.

Pool metadata (rows, files), downloaded shards (successes, failures by reason), score tables (rows,
status counts, score columns with quantiles), subsets (size, share of the pool, how each was made),
training runs and evaluation summaries. ``--json`` prints the same as JSON; ``--html`` also writes
``report/index.html`` (plots, example grids, funnel, curves; see report.py) and ``report/summary.json``;
``--labels FILE`` attaches the user's own labels of the pool's pairs to them (user_labels.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poolsieve.core.errors import InputError
from poolsieve.core.formats import STATUS_SUCCESS
from poolsieve.core.runtime import Runtime
from poolsieve.core.shown_text import for_terminal
from poolsieve.core.stage import Stage, option
from poolsieve.core.subsets import check_subset_record, subset_rows
from poolsieve.core.workspace import Workspace
from poolsieve.eval.aggregate import read_eval_folder
from poolsieve.pipeline.inspect.report import write_report
from poolsieve.pipeline.inspect.user_labels import read_labels


@dataclass
class InspectConfig:
    """The ``inspect:`` section: how the summary is shown."""

    json: bool = option(False, "print the summary as JSON")
    html: bool = option(False, "also write report/index.html (plots, example grids, funnel) and report/summary.json")
    labels: str | None = option(None, "your own labels of the pool's pairs for the report: a parquet or CSV file "
                                      "with a uid column and label columns", metavar="FILE")


def inspect_workspace(ws: Workspace) -> dict[str, Any]:
    """Collect a summary of every stage's outputs that exist in ``ws``."""
    out: dict[str, Any] = {"workspace": str(ws.root)}
    meta = sorted(ws.metadata_dir.glob("*.parquet")) if ws.metadata_dir.is_dir() else []
    if meta:
        out["metadata"] = {"files": len(meta), "rows": sum(pq.read_metadata(p).num_rows for p in meta)}
    if ws.shards_dir.is_dir():
        stats = [json.loads(p.read_text()) for p in sorted(ws.shards_dir.glob("*_stats.json"))]
        if stats:
            reasons: dict[str, int] = {}
            for s in stats:
                for k, v in (s.get("status_dict") or {}).items():
                    if k != STATUS_SUCCESS:
                        reasons[k] = reasons.get(k, 0) + int(v)
            out["shards"] = {"shards": len(stats), "urls": sum(s.get("count", 0) for s in stats),
                             "successes": sum(s.get("successes", 0) for s in stats),
                             "failures_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}
    if ws.scores_dir.is_dir() and any(ws.scores_dir.glob("*.parquet")):
        out["scores"] = _score_summary(ws)
    if ws.subsets_dir.is_dir():
        subsets, problems = {}, {}
        for npy in sorted(ws.subsets_dir.glob("*.npy")):
            try:  # the header alone (nothing unpickled), then the record checked against the file
                n = subset_rows(npy)
                info = check_subset_record(npy) or {}
            except InputError as e:
                problems[npy.stem] = str(e)
                continue
            subsets[npy.stem] = {"uids": n, "spec": info.get("spec")}
        if subsets:
            out["subsets"] = subsets
        if problems:
            out["subset_problems"] = problems
    runs_root = ws.runs_root
    if runs_root.is_dir():
        runs = {}
        for run in sorted(p for p in runs_root.iterdir() if p.is_dir()):
            summary = run / "summary.json"
            runs[run.name] = json.loads(summary.read_text()) if summary.exists() else {"status": "not finished (no summary.json)"}
        if runs:
            out["runs"] = runs
    evals, problems = _eval_summaries(ws)
    if evals:
        out["evals"] = evals
    if problems:
        out["eval_problems"] = problems
    return out


def _eval_summaries(ws: Workspace) -> tuple[dict[str, Any], dict[str, str]]:
    """(evaluation -> {task: main metric}, evaluation -> why it cannot be read): every line of its results
    files checked by their one reader (``eval/aggregate.py``)."""
    evals_root = ws.evals_root
    evals, problems = {}, {}
    for ev in sorted(p for p in evals_root.iterdir() if p.is_dir()) if evals_root.is_dir() else []:
        try:
            lines = list(read_eval_folder(ev).values())  # eval_results.jsonl + other_results.jsonl (own tasks)
        except InputError as e:
            problems[ev.name] = str(e)
            continue
        if lines:
            evals[ev.name] = {r["dataset"]: r["metrics"].get("main_metric") for r in lines}
    return evals, problems


def _score_summary(ws: Workspace) -> dict[str, Any]:
    tables = ws.score_tables()
    schema = pq.read_schema(tables[0])
    score_cols = [c for c in schema.names if c.startswith("clip_") and c.endswith("_score")]
    cols = [c for c in ["status", *score_cols] if c in schema.names]
    status: dict[str, int] = {}
    values: dict[str, list[Any]] = {c: [] for c in score_cols}
    rows = 0
    for p in tables:
        t = pq.read_table(p, columns=cols)
        rows += t.num_rows
        if "status" in cols:
            for entry in pc.value_counts(t["status"]).to_pylist():
                status[entry["values"]] = status.get(entry["values"], 0) + entry["counts"]
        for c in score_cols:
            values[c].append(t[c].to_numpy(zero_copy_only=False))
    quantiles = {}
    for c, parts in values.items():
        v = np.concatenate(parts).astype(np.float64)
        v = v[~np.isnan(v)]
        if len(v):
            q = np.quantile(v, [0.1, 0.5, 0.9])
            quantiles[c] = {"mean": round(float(v.mean()), 4), "p10": round(float(q[0]), 4),
                            "p50": round(float(q[1]), 4), "p90": round(float(q[2]), 4)}
    return {"tables": len(tables), "rows": rows, "status": status, "score_columns": quantiles}


def _shown(value: Any) -> Any:
    """``value`` with every string in it (keys too) escaped for the terminal (``core/shown_text.py``): the
    names and texts of a workspace from someone else never reach the terminal raw."""
    if isinstance(value, dict):
        return {_shown(k): _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return for_terminal(value) if isinstance(value, str) else value


def _print(summary: dict[str, Any]) -> None:
    summary = _shown(summary)
    print(f"== workspace {summary['workspace']}")
    if "metadata" in summary:
        m = summary["metadata"]
        print(f"  metadata   {m['rows']:,} rows in {m['files']} parquet file(s)")
    if "shards" in summary:
        s = summary["shards"]
        rate = s["successes"] / s["urls"] if s["urls"] else 0.0
        print(f"  shards     {s['shards']} shard(s), {s['successes']:,}/{s['urls']:,} downloaded ({rate:.1%})")
        for reason, n in list(s["failures_by_reason"].items())[:5]:
            print(f"             {n:>8,}  {reason}")
    if "scores" in summary:
        s = summary["scores"]
        print(f"  scores     {s['rows']:,} rows in {s['tables']} table(s); status {s['status']}")
        for c, q in s["score_columns"].items():
            print(f"             {c}: mean {q['mean']}  p10 {q['p10']}  p50 {q['p50']}  p90 {q['p90']}")
    total = summary.get("scores", {}).get("status", {}).get(STATUS_SUCCESS)
    for name, sub in summary.get("subsets", {}).items():
        share = f" ({sub['uids'] / total:.1%} of pool)" if total else ""
        print(f"  subset     {name}: {sub['uids']:,} uids{share}")
    for name, problem in summary.get("subset_problems", {}).items():
        print(f"  subset     {name}: unreadable: {problem}")
    for name, problem in summary.get("eval_problems", {}).items():
        print(f"  eval       {name}: unreadable: {problem}")
    for name, run in summary.get("runs", {}).items():
        seen = run.get("samples_seen")
        print(f"  run        {name}: {run.get('status', 'done')}" + (f", {seen:,} samples seen" if seen else ""))
    if "labels" in summary:
        lab = summary["labels"]
        print(f"  labels     {lab['file']}: {lab['rows']:,} rows, column(s) {', '.join(lab['columns'])}")
    for name, tasks in summary.get("evals", {}).items():
        body = ", ".join(f"{t}={v:.3f}" if isinstance(v, float) else f"{t}={v}" for t, v in tasks.items())
        print(f"  eval       {name}: {body}")


def run(ws: Workspace, cfg: InspectConfig, runtime: Runtime | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """The workspace summary (``inspect_workspace``), the HTML report written when ``cfg.html``; how to show it
    rides along under ``show`` (``"json"`` or ``"text"``)."""
    summary = inspect_workspace(ws)
    labels = Path(cfg.labels).expanduser() if cfg.labels else None
    if cfg.html:
        summary["report"] = str(write_report(ws, summary, labels=labels))
    elif labels is not None:  # no report to show them in: the file is still checked, and counted
        summary["labels"] = read_labels(labels, set()).summary()
    return {**summary, "show": "json" if cfg.json else "text"}


def report(result: dict[str, Any]) -> None:
    """Print the summary (text or JSON); an unreadable subset or evaluation then fails the command (everything
    else was shown)."""
    summary = {k: v for k, v in result.items() if k != "show"}
    if result.get("show") == "json":
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print(summary)
    if "report" in summary:
        print(f"report: {for_terminal(summary['report'])}")
    problems = [*summary.get("subset_problems", {}).values(), *summary.get("eval_problems", {}).values()]
    if problems:  # everything else is shown; the exit status says something is wrong
        more = f" ({len(problems) - 1} more unreadable subset(s) or evaluation(s))" if len(problems) > 1 else ""
        raise InputError(None, problems[0] + more)


STAGE = Stage("inspect", InspectConfig, run=run,
              report=report, reads=("metadata/", "shards/", "scores/", "subsets/", "runs/", "evals/"),
              writes=("report/",))
