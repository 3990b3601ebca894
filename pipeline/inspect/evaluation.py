"""The report's Evaluation section: every task that was run, and what it takes to read its score.

When an evaluation holds any of DataComp's 38 scored tasks, a first table gives DataComp's group scores
and Average per evaluation (``eval/aggregate.py``'s rule: a group with a missing task and the Average of
an incomplete set stay blank; the highest of each column marked). Then every task that was run, each a
row, the user's own tasks (``evaluate --tasks FOLDER``) first, the synthetic ones next, DataComp's in its
order: the task's classes, its chance level (1/classes for an accuracy), its test images, and per
evaluation the main metric with its 95% Wilson interval, drawn as a bar over 0..1 beside the chance
level. "best" marks the highest score of a row only where its interval lies above every other
evaluation's interval: a few images' difference is not called a win.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poolsieve.core.shown_text import for_html
from poolsieve.core.workspace import Workspace
from poolsieve.eval.aggregate import TaskFacts, aggregate, read_eval_folder, task_facts
from poolsieve.eval.tasks import GROUPS, SCORED_TASKS, SYNTHETIC_GROUP, TASKS

AVERAGE = "Average"
YOUR_TASK = "your task"
DATACOMP_NAMES = frozenset(t.name for t in SCORED_TASKS)


@dataclass
class Score:
    value: float | None
    interval: tuple[float, float] | None


@dataclass
class TaskRow:
    """One task across the evaluations that ran it."""

    name: str
    kind: str  # "your task", "synthetic" or a DataComp group
    facts: TaskFacts
    scores: dict[str, Score]  # evaluation -> its score


def task_rows(results: dict[str, dict[str, dict[str, Any]]]) -> list[TaskRow]:
    """Every task in any evaluation's results, in the section's order (own, synthetic, DataComp's)."""
    rows: dict[str, TaskRow] = {}
    for name, lines in results.items():
        for key, rec in lines.items():
            task = str(rec.get("dataset") or key)
            value = rec["metrics"].get("main_metric")
            value = float(value) if isinstance(value, (int, float)) else None
            facts = task_facts(rec)
            if task not in rows:
                rows[task] = TaskRow(task, _kind(key), facts, {})
            elif facts.images != rows[task].facts.images:  # evaluations on test sets of different sizes
                rows[task].facts = TaskFacts(facts.metric, facts.classes, None, facts.chance)
            rows[task].scores[name] = Score(value, facts.interval(value))
    order = {t.name: i for i, t in enumerate(TASKS.values())}
    rank = {YOUR_TASK: 0, "synthetic": 1}
    return sorted(rows.values(), key=lambda r: (rank.get(r.kind, 2), order.get(r.name, 0), r.name))


def _kind(key: str) -> str:
    task = TASKS.get(key)
    if task is None:
        return YOUR_TASK
    if task.group == SYNTHETIC_GROUP:
        return "synthetic"
    return task.group or "DataComp"


def separated_best(scores: dict[str, Score]) -> str | None:
    """The evaluation whose interval lies wholly above every other's (None: no such clear winner, a score
    without an interval, or a single evaluation)."""
    known = [(s.value, s.interval, n) for n, s in scores.items() if s.value is not None]
    if len(known) < 2 or any(interval is None for _, interval, _ in known):
        return None
    ranked = sorted(((value, interval, n) for value, interval, n in known if interval is not None), reverse=True)
    (_, (low, _), top), others = ranked[0], ranked[1:]
    return top if all(high < low for _, (_, high), _ in others) else None


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _bar(score: Score, chance: float | None) -> str:
    """The interval as a bar over 0..1 with the score as a tick and chance as a dashed line."""
    if score.value is None or not 0.0 <= score.value <= 1.0:
        return ""
    parts = []
    if score.interval is not None:
        lo, hi = score.interval
        parts.append(f'<span class="ci-range" style="left:{lo:.1%};width:{hi - lo:.1%}"></span>')
    if chance is not None:
        parts.append(f'<span class="ci-chance" style="left:{chance:.1%}"></span>')
    parts.append(f'<span class="ci-point" style="left:{score.value:.1%}"></span>')
    return f'<div class="ci" aria-hidden="true">{"".join(parts)}</div>'


def _score_cell(score: Score | None, chance: float | None, best: bool) -> str:
    if score is None:
        return '<td class="num"></td>'
    interval = ("" if score.interval is None else
                f'<div class="interval">{score.interval[0]:.3f}–{score.interval[1]:.3f}</div>')
    title = f"95% interval {score.interval[0]:.3f}–{score.interval[1]:.3f}" if score.interval else ""
    mark = ' <span class="best-mark">best</span>' if best else ""
    return (f'<td class="num score{" best" if best else ""}" title="{title}">{_number(score.value)}{mark}'
            f"{interval}{_bar(score, chance)}</td>")


def task_table(rows: list[TaskRow], names: list[str]) -> str:
    """Every task, one row each, the evaluations side by side."""
    out = ['<div class="scroll"><table class="results evals tasks"><thead><tr><th>task</th><th>kind</th>'
           '<th class="num">classes</th><th class="num">chance</th><th class="num">test images</th>'
           + "".join(f'<th class="num">{for_html(n)}</th>' for n in names) + "</tr></thead><tbody>"]
    for row in rows:
        best = separated_best(row.scores)
        f = row.facts
        metric = f' <span class="metric">{for_html(f.metric)}</span>' if f.metric and f.metric != "acc1" else ""
        out.append(f'<tr class="kind-{"own" if row.kind == YOUR_TASK else "other"}"><td>{for_html(row.name)}'
                   f"{metric}</td><td>{for_html(row.kind)}</td>"
                   f'<td class="num">{f.classes or ""}</td><td class="num">{_number(f.chance)}</td>'
                   f'<td class="num">{f"{f.images:,}" if f.images else ""}</td>'
                   + "".join(_score_cell(row.scores.get(n), f.chance, n == best) for n in names) + "</tr>")
    out.append("</tbody></table></div>")
    out.append('<p class="note">Each score: the task\'s main metric (accuracy unless named), its 95% Wilson '
               "interval over the test images, and a bar over 0 to 1 (the interval shaded, the score a tick, chance "
               'dashed). "best" marks the highest score only where its interval lies above every other '
               "evaluation's; overlapping intervals mark nothing. Chance is 1/classes for an accuracy.</p>")
    return "".join(out)


def _cell(value: float | None, best: float | None) -> str:
    marked = best is not None and value is not None and value == best
    return f'<td class="num{" best" if marked else ""}">{_number(value)}</td>'


def group_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """DataComp's groups and Average per evaluation that holds any of its 38 scored tasks."""
    groups = {n: aggregate(r) for n, r in results.items()
              if any(rec.get("dataset") in DATACOMP_NAMES for rec in r.values())}
    if not groups:
        return ""
    columns = [g for g in [*GROUPS, AVERAGE] if g != SYNTHETIC_GROUP and any(v.get(g) is not None for v in groups.values())]
    out = ['<table class="results evals groups"><thead><tr><th>evaluation</th>'
           + "".join(f'<th class="num">{for_html(g)}</th>' for g in columns)
           + '<th class="num">DataComp tasks scored</th></tr></thead><tbody>']
    present = {g: [v[g] for v in groups.values() if v.get(g) is not None] for g in columns}
    best = {g: max(values) if len(values) > 1 else None for g, values in present.items()}
    for name, v in groups.items():
        cells = "".join(_cell(v.get(g), best[g]) for g in columns)
        out.append(f'<tr><td>{for_html(name)}</td>{cells}<td class="num">{v["scored"]} of {len(SCORED_TASKS)}</td></tr>')
    out.append("</tbody></table>")
    notes = sorted({v["incomplete"] for v in groups.values() if v.get("incomplete")})
    note = (f"{'; '.join(notes)}: a group with a missing task and the Average stay blank (DataComp's rule). "
            if notes else "")
    out.append(f'<p class="note">{for_html(note)}DataComp\'s group means; the highest of each column is marked '
               "(means over tasks carry no interval: compare the tasks below).</p>")
    return "".join(out)


def eval_section(ws_root: Path, names: list[str]) -> str:
    """The Evaluation section's body: DataComp's groups (when any of its tasks ran), then every task."""
    results = {name: read_eval_folder(Workspace(ws_root).eval_dir(name)) for name in names}
    results = {k: v for k, v in results.items() if v}
    if not results:
        return ""
    return group_table(results) + task_table(task_rows(results), list(results))
