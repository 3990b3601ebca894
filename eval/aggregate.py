"""``results.jsonl`` (one line per task, DataComp's layout) and the summary with group averages.

A line is ``{"key", "dataset", "task_type", "group", "metrics": {..., "main_metric"}, "seconds"}``;
DataComp's own fields (``key``, ``dataset``, ``metrics.main_metric``) mean what they mean there, so its
``aggregate_scores.py`` reads poolsieve's file. Group averages: ImageNet, ImageNet dist. shifts,
VTAB, Retrieval, Synthetic, and the average over all tasks with a main metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.formats import atomic_path, write_json

from .tasks import GROUPS, TASKS, Task

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


def result_line(task: Task, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"key": task.key, "dataset": task.name, "task_type": task.task_type, "group": task.group,
            "metrics": metrics, "seconds": round(seconds, 2)}


def read_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """Lines of a results.jsonl by task key (a later line for a key replaces an earlier one)."""
    path = Path(path)
    if not path.exists():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"line {i} is not valid JSON ({e})") from None
        if not isinstance(rec, dict) or "key" not in rec or not isinstance(rec.get("metrics"), dict):
            raise InputError(path, f"line {i} lacks 'key' or 'metrics'")
        out[rec["key"]] = rec
    return out


def write_results(path: str | Path, lines: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(rec) + "\n" for rec in lines))


def append_result(path: str | Path, line: dict[str, Any]) -> None:
    """Add one task's line (replacing an older line for the same key), keeping the file whole."""
    lines = read_results(path)
    lines[line["key"]] = line
    write_results(path, lines.values())


def aggregate(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Group averages of main metrics (None where a group has no results), and the overall average."""
    by_group: dict[str, list[float]] = {g: [] for g in GROUPS}
    every: list[float] = []
    for key, rec in results.items():
        value = rec["metrics"].get("main_metric")
        if value is None:
            continue
        group = rec.get("group") or (TASKS[key].group if key in TASKS else None)
        if group in by_group:
            by_group[group].append(float(value))
        every.append(float(value))
    out: dict[str, float | None] = {g: (float(np.mean(v)) if v else None) for g, v in by_group.items()}
    out["Average"] = float(np.mean(every)) if every else None
    return out


def write_summary(out_dir: str | Path, results: dict[str, dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    summary = {**extra, "tasks": {rec["dataset"]: rec["metrics"].get("main_metric") for rec in results.values()},
               "groups": aggregate(results)}
    write_json(Path(out_dir) / SUMMARY_FILE, summary)
    return summary
