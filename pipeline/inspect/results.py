"""Training and evaluation sections: loss curves per run, and the evaluation side by side per subset.

Loss points come from each run's ``summary.json`` (``losses``: samples seen and loss, parsed from
open_clip's log by the trainer), or for a run still going from that log itself. The evaluation table has one row per evaluated subset and DataComp's
group scores and Average as columns (eval/aggregate.py's rule, so an incomplete set of the 38 tasks has
no Average), the best of each column marked; every task follows, folded, one column per subset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.shown_text import for_html
from poolsieve.eval.aggregate import aggregate, read_eval_folder
from poolsieve.eval.tasks import GROUPS, SCORED_TASKS, TASKS
from poolsieve.pipeline.inspect.charts import Series, line_chart_svg

AVERAGE = "Average"


def _log_losses(run_dir: Path) -> list[dict[str, Any]]:
    """Loss points of a run still going (no summary.json yet), from open_clip's ``out.log``."""
    from poolsieve.train.trainer import parse_train_line

    try:
        lines = (run_dir / "out.log").read_text(errors="replace").splitlines()
    except OSError:
        return []
    records = [r for line in lines if (r := parse_train_line(line))]
    return [{"samples_seen": r["epoch"] * r["samples_per_epoch"] + r["epoch_samples"], "loss": r["loss"]}
            for r in records]


def loss_chart(ws_root: Path, runs: dict[str, Any]) -> str:
    """Loss against samples seen, one line per run (a run without summary.json: its log so far)."""
    series = []
    for name, info in runs.items():
        losses = info.get("losses") if "losses" in info else _log_losses(ws_root / "runs" / name)
        points = [p for p in losses or [] if isinstance(p, dict)
                  and isinstance(p.get("samples_seen"), (int, float)) and isinstance(p.get("loss"), (int, float))]
        if points:
            series.append(Series(name, np.array([p["loss"] for p in points], dtype=np.float64),
                                 np.array([p["samples_seen"] for p in points], dtype=np.float64)))
    if not series:
        return ""
    return line_chart_svg("training loss per run", series, "samples seen", "contrastive loss")


def runs_table(runs: dict[str, Any]) -> str:
    cols = [("status", "status"), ("scale", "scale"), ("samples seen", "samples_seen"), ("dataset size", "dataset_size"),
            ("passes", "passes_over_data"), ("final loss", "final_loss"), ("seconds", "seconds"),
            ("samples/s", "samples_per_second")]
    out = ['<table class="results"><thead><tr><th>run</th>' + "".join(f'<th class="num">{c}</th>' for c, _ in cols)
           + "</tr></thead><tbody>"]
    for name, info in runs.items():
        cells = []
        for _, key in cols:
            v = info.get(key, "done" if key == "status" else None)
            cells.append(f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                         else for_html(str(v)) if v is not None else "")
        out.append(f"<tr><td>{for_html(name)}</td>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _cell(value: float | None, best: float | None) -> str:
    text = "" if value is None else f"{value:.3f}"
    marked = best is not None and value is not None and value == best
    return f'<td class="num best">{text}</td>' if marked else f'<td class="num">{text}</td>'


def _best(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if len(present) > 1 else None


def eval_table(ws_root: Path, names: list[str]) -> str:
    """One row per evaluated subset: DataComp's groups and Average (best per column marked); then every
    task with one column per subset (best per row marked), folded."""
    results = {name: read_eval_folder(ws_root / "evals" / name) for name in names}
    results = {k: v for k, v in results.items() if v}
    if not results:
        return ""
    groups = {name: aggregate(r) for name, r in results.items()}
    columns = [g for g in [*GROUPS, AVERAGE] if any(groups[n].get(g) is not None for n in results)]
    out = ['<table class="results evals"><thead><tr><th>subset</th>'
           + "".join(f'<th class="num">{for_html(g)}</th>' for g in columns)
           + '<th class="num">tasks scored</th></tr></thead><tbody>']
    best = {g: _best([groups[n].get(g) for n in results]) for g in columns}
    for name in results:
        cells = "".join(_cell(groups[name].get(g), best[g]) for g in columns)
        out.append(f'<tr><td>{for_html(name)}</td>{cells}<td class="num">{groups[name].get("scored", 0)} of '
                   f"{len(SCORED_TASKS)}</td></tr>")
    out.append("</tbody></table>")
    notes = sorted({g["incomplete"] for g in groups.values() if g.get("incomplete")})
    if notes:
        out.append(f'<p class="note">{for_html("; ".join(notes))}: a group with a missing task and the '
                   "Average stay blank (DataComp's rule).</p>")
    out.append(_task_table(results))
    return "".join(out)


def _task_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Every task's main metric per subset, in the registry's order by group (the user's tasks last)."""
    tasks: dict[str, dict[str, float | None]] = {}
    group_of: dict[str, str] = {}
    for name, lines in results.items():
        for key, rec in lines.items():
            task = str(rec.get("dataset", key))
            value = (rec.get("metrics") or {}).get("main_metric")
            tasks.setdefault(task, {})[name] = float(value) if isinstance(value, (int, float)) else None
            group_of[task] = str(rec.get("group") or (TASKS[key].group if key in TASKS else "") or "other")
    order = {t.name: i for i, t in enumerate(TASKS.values())}
    cols = list(results)
    out = [f"<details><summary>all {len(tasks)} tasks</summary>"
           '<table class="results evals"><thead><tr><th>task</th><th>group</th>'
           + "".join(f'<th class="num">{for_html(c)}</th>' for c in cols) + "</tr></thead><tbody>"]
    for task in sorted(tasks, key=lambda t: (order.get(t, len(order)), t)):
        values = tasks[task]
        best = _best([values.get(c) for c in cols])
        out.append(f"<tr><td>{for_html(task)}</td><td>{for_html(group_of[task])}</td>"
                   + "".join(_cell(values.get(c), best) for c in cols) + "</tr>")
    out.append("</tbody></table></details>")
    return "".join(out)
