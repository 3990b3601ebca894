"""Results files and DataComp's aggregate scores.

``eval_results.jsonl`` holds one line per DataComp task in DataComp's format, ``{"key", "dataset",
"metrics": {..., "main_metric"}}``, plus poolsieve's ``task_type``, ``group``, ``metric`` (the main
metric's name) and ``seconds``, and in ``metrics`` the test images (``num_samples``) and, for a
classification, its ``num_classes``; DataComp's ``aggregate_scores.py`` reads it as is (it counts the
lines with a main metric and wants 38). The user's
own tasks and the synthetic tasks go to ``other_results.jsonl`` in the same format, so they never upset
that count. Aggregation is ``aggregate_scores.py``'s: ImageNet is ImageNet 1k; ImageNet dist. shifts,
VTAB and Retrieval are plain means over their tasks by name; Average is the mean over all 38 scored
tasks. With any of the 38 missing there is no Average, only ``incomplete: N of 38 tasks``, and a group
with a missing task has no value.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.formats import atomic_path, write_json
from poolsieve.core.untrusted_files import open_no_follow, open_regular_fd

from .tasks import (
    CLASSIFICATION,
    DIST_SHIFTS,
    IMAGENET,
    RETRIEVAL,
    RETRIEVAL_GROUP,
    SCORED_TASKS,
    SYNTHETIC_GROUP,
    TASKS,
    VTAB,
    Task,
)

RESULTS_FILE = "eval_results.jsonl"
OTHER_RESULTS_FILE = "other_results.jsonl"
LEGACY_RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
MAX_RESULTS_BYTES = 16 << 20  # one line per task: 38 lines are a few kB
COUNT_FIELDS = ("num_samples", "num_classes")  # in a line's metrics: the test images, a classification's classes
SCORED_NAMES = tuple(t.name for t in SCORED_TASKS)
DEFAULT_METRICS = {CLASSIFICATION: "acc1", RETRIEVAL: "mean_recall@1"}  # a user's own task's main metric
DATACOMP_GROUPS = {g: tuple(t.name for t in SCORED_TASKS if t.group == g) for g in (DIST_SHIFTS, VTAB, RETRIEVAL_GROUP)}


def results_file_for(task: Task) -> str:
    return RESULTS_FILE if task.datacomp else OTHER_RESULTS_FILE


def is_finite_number(value: Any) -> bool:
    """A JSON number that is finite (``true``/``false`` are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def result_line(task: Task, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A task's line; a main metric that is not a finite number (NaN from a degenerate model) is null."""
    if "main_metric" in metrics and not is_finite_number(metrics["main_metric"]):
        metrics = {**metrics, "main_metric": None}
    return {"key": task.key, "dataset": task.name, "metrics": metrics, "task_type": task.task_type,
            "group": task.group, "metric": task.main_metric, "seconds": round(seconds, 2)}


def _check_line(rec: Any, path: Path, i: int) -> None:
    """One line of a results file as DataComp writes it: string ``key`` and ``dataset``, a ``metrics``
    mapping whose ``main_metric`` is a finite number or null; else ``InputError`` naming file and line."""
    if not isinstance(rec, dict) or not isinstance(rec.get("metrics"), dict):
        raise InputError(path, f"line {i} is not a result line (a JSON object with 'key', 'dataset' and 'metrics')")
    for field in ("key", "dataset"):
        if not isinstance(rec.get(field), str) or not rec[field]:
            raise InputError(path, f"line {i}: '{field}' must be a non-empty string, got "
                                   f"{type(rec.get(field)).__name__ if field in rec else 'nothing'}")
    value = rec["metrics"].get("main_metric")
    if value is not None and not is_finite_number(value):
        raise InputError(path, f"line {i}: 'main_metric' must be a finite number or null, got {_shown(value)}")
    for field in COUNT_FIELDS:  # what the report's chance level and intervals are computed from
        count = rec["metrics"].get(field)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise InputError(path, f"line {i}: '{field}' must be a whole number of at least 1 or null, "
                                   f"got {_shown(count)}")
    if rec.get("metric") is not None and not isinstance(rec["metric"], str):
        raise InputError(path, f"line {i}: 'metric' must be a metric's name or null, got {_shown(rec['metric'])}")


def _shown(value: Any) -> str:
    """A bad value as an error shows it: a float's repr, else its type and its first characters."""
    return repr(value) if isinstance(value, float) else f"a {type(value).__name__} ({ascii(value)[:40]})"


def parse_results(data: bytes, path: str | Path) -> dict[str, dict[str, Any]]:
    """Lines of a results file's bytes by task key (a later line for a key replaces an earlier one), each
    checked (``_check_line``); ``path`` names the file in errors."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, or an int too long to read
            raise InputError(path, f"line {i} is not valid JSON ({str(e)[:100]})") from None
        _check_line(rec, path, i)
        out[rec["key"]] = rec
    return out


def read_results_bytes(path: str | Path, *, follow_symlinks: bool = True) -> bytes | None:
    """The bytes of a results file (None when there is none); refused in one line unless it is a regular
    file of at most ``MAX_RESULTS_BYTES`` (a symlink too, with ``follow_symlinks=False``)."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    fd = open_regular_fd(path) if follow_symlinks else open_no_follow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_RESULTS_BYTES + 1)
    if len(data) > MAX_RESULTS_BYTES:
        raise InputError(path, f"results file is over {MAX_RESULTS_BYTES >> 20} MiB; it holds one line per task")
    return data


def read_results(path: str | Path, *, follow_symlinks: bool = True) -> dict[str, dict[str, Any]]:
    """Lines of a results file by task key, each checked; ``{}`` when there is no such file."""
    data = read_results_bytes(path, follow_symlinks=follow_symlinks)
    return {} if data is None else parse_results(data, path)


def read_eval_folder(folder: str | Path, *, follow_symlinks: bool = True) -> dict[str, dict[str, Any]]:
    """All results of an evaluation folder (DataComp's file, the other tasks' file, or an old results.jsonl),
    every line checked; with ``follow_symlinks=False`` a results file that is a symlink is refused."""
    folder = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    for name in (LEGACY_RESULTS_FILE, RESULTS_FILE, OTHER_RESULTS_FILE):
        out.update(read_results(folder / name, follow_symlinks=follow_symlinks))
    return out


PROPORTIONS = ("acc1", "acc5", "mean_per_class_recall")  # main metrics that are a share of the test images
WILSON_Z = 1.959964  # two-sided 95%


@dataclass(frozen=True)
class TaskFacts:
    """What reading a task's score takes: its main metric's name, classes, test images and chance level."""

    metric: str | None
    classes: int | None
    images: int | None
    chance: float | None

    def interval(self, value: float | None) -> tuple[float, float] | None:
        """The 95% Wilson interval of ``value`` over the test images, for a share of them (else None)."""
        if value is None or self.metric not in PROPORTIONS or not self.images:
            return None
        return wilson_interval(value, self.images)


def task_facts(rec: dict[str, Any]) -> TaskFacts:
    """A checked result line's facts: what the line records (``metric``, ``num_classes``, ``num_samples``),
    else the registry's (DataComp's test set sizes); chance is 1/classes for accuracies (5/classes for
    top-5), else DataComp's random score where the registry has one."""
    task = TASKS.get(rec["key"])
    metrics = rec["metrics"]
    metric = rec.get("metric") or (task.main_metric if task else DEFAULT_METRICS.get(str(rec.get("task_type"))))
    classes = metrics.get("num_classes") or (task.num_classes if task else None)
    images = metrics.get("num_samples") or (task.size if task and task.datacomp else None)
    chance = task.random_score if task else None
    if classes and metric in ("acc1", "mean_per_class_recall"):
        chance = 1 / classes
    elif classes and metric == "acc5":
        chance = min(1.0, 5 / classes)
    return TaskFacts(metric, classes, images, chance)


def wilson_interval(share: float, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson's score interval of a binomial share observed over ``n`` trials."""
    share = min(1.0, max(0.0, share))
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def write_results(path: str | Path, lines: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(rec) + "\n" for rec in lines))


def append_result(path: str | Path, line: dict[str, Any]) -> None:
    """Add one task's line (replacing an older line for the same key), keeping the file whole."""
    lines = read_results(path)
    lines[line["key"]] = line
    write_results(path, lines.values())


def _scores_by_name(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for rec in results.values():
        value = rec["metrics"].get("main_metric")
        if value is not None and rec.get("dataset") in SCORED_NAMES:
            out[rec["dataset"]] = float(value)
    return out


def aggregate(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """DataComp's group scores and Average (None where a task is missing), the Synthetic mean, and
    ``incomplete`` ("incomplete: N of 38 tasks", None when all 38 are there)."""
    scores = _scores_by_name(results)
    out: dict[str, Any] = {IMAGENET: scores.get("ImageNet 1k")}
    for group, names in DATACOMP_GROUPS.items():
        out[group] = float(np.mean([scores[n] for n in names])) if all(n in scores for n in names) else None
    synthetic = [float(r["metrics"]["main_metric"]) for k, r in results.items()
                 if k in TASKS and TASKS[k].group == SYNTHETIC_GROUP and r["metrics"].get("main_metric") is not None]
    out[SYNTHETIC_GROUP] = float(np.mean(synthetic)) if synthetic else None
    complete = len(scores) == len(SCORED_NAMES)
    out["Average"] = float(np.mean([scores[n] for n in SCORED_NAMES])) if complete else None
    out["scored"] = len(scores)
    out["incomplete"] = None if complete else f"incomplete: {len(scores)} of {len(SCORED_NAMES)} tasks"
    return out


def missing_tasks(results: dict[str, dict[str, Any]]) -> list[str]:
    """Keys of DataComp's scored tasks that have no main metric in ``results`` (registry order)."""
    scores = _scores_by_name(results)
    return [t.key for t in SCORED_TASKS if t.name not in scores]


def write_summary(out_dir: str | Path, results: dict[str, dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    summary = {**extra, "tasks": {rec["dataset"]: rec["metrics"].get("main_metric") for rec in results.values()},
               "groups": aggregate(results)}
    write_json(Path(out_dir) / SUMMARY_FILE, summary)
    return summary
