"""Zero-shot evaluation of a trained model on DataComp's tasks, the synthetic tasks or the user's own.

``poolsieve evaluate --subset NAME`` evaluates the final checkpoint of ``<workspace>/runs/NAME/`` and
writes ``<workspace>/evals/NAME/eval_results.jsonl`` (DataComp's file, one line per task),
``other_results.jsonl`` (other tasks) and ``summary.json`` (DataComp's group scores and Average).
``--tasks`` takes ``synthetic`` (default), ``datacomp38``, task keys, task folders or names registered
under ``evaluate: custom_tasks:``. ``--download DIR`` fetches DataComp's evaluation sets into DIR in the
layout of DataComp's ``download_evalsets.py``; ``--data-root DIR`` reads them from there.

Evaluation runs in the command's own process (one model, task sets of thousands of images: nothing worth
spreading over nodes), on its GPU if it has one; with ``--ray-address`` (or in ``poolsieve run`` on a
cluster) it runs there the same way and writes the same results, and a worker node lost meanwhile does not
touch it. A killed evaluation resumes: finished tasks are kept.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError
from poolsieve.core.locks import exclusive
from poolsieve.core.models import ModelSpec, register_model_config
from poolsieve.core.names import check_name
from poolsieve.core.progress import format_table, print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage
from poolsieve.core.workspace import Workspace
from poolsieve.train.run_folder import load_summary

from .download import download_evalsets
from .evaluator import EvalConfig, evaluate_model
from .tasks import GROUPS


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI-only flags (the options come from ``EvalConfig``)."""
    p.add_argument("--download", type=Path, metavar="DIR",
                   help="fetch the evaluation sets of --tasks (default datacomp38) into DIR, as DataComp's "
                        "download_evalsets.py lays them out; resumes a partial download")


def cli_action(ctx: Any, args: argparse.Namespace) -> int | None:
    """``--download DIR``: fetch the evaluation sets; the evaluation (if one is named) then reads them.
    An evaluation of ``--model`` may start a new workspace (its results folder goes there)."""
    for subset in args.subset or []:  # every name checked before any evaluation starts
        check_name(subset, "subset name")
    if args.model and ctx.workspace_path is not None:
        ctx.workspace(create=True)
    if not args.download:
        return None

    downloaded = download_evalsets(args.download, args.tasks or "datacomp38")
    if not (args.model or args.subset):
        return 1 if downloaded["failed"] else 0
    if downloaded["failed"]:
        raise ConfigError(f"{len(downloaded['failed'])} evaluation set(s) failed to download")
    args.data_root = args.data_root or str(args.download)
    return None


def checkpoint_of_run(run_dir: Path) -> tuple[str, str]:
    """(arch, checkpoint path) of a finished training run."""
    s = load_summary(run_dir)
    return s["model"], s["checkpoint"]


def _model_folder(arch: str) -> str:
    """The results folder's name of a model: its architecture name, in the name rule's characters."""
    name = arch.replace("hf-hub:", "").replace("local-dir:", "").replace("/", "__")
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("_.")[:128] or "model"


def evaluate(ws: Workspace, config: EvalConfig, runtime: Runtime | None = None, *,
             overwrite: bool = False) -> dict[str, Any]:
    """Evaluate one model (a subset's trained run, or ``--model``) on ``config.tasks``; return the summary."""
    for path in config.model_config:
        register_model_config(path)
    if config.model and config.subset:
        raise ConfigError("name one model to evaluate: --subset NAME or --model ARCH:CHECKPOINT, not both")
    if config.model:
        spec = ModelSpec.parse(config.model)
        out = Path(config.output).expanduser() if config.output else ws.eval_dir(_model_folder(spec.arch))
    elif config.subset:
        name = check_name(config.subset, "subset name")
        arch, checkpoint = checkpoint_of_run(ws.run_dir(name))
        spec, out = ModelSpec(arch, checkpoint), ws.eval_dir(name)
    else:
        raise ConfigError("name what to evaluate: --subset NAME (a run in runs/NAME/), --model ARCH:CHECKPOINT, "
                          "or --download DIR alone to fetch the evaluation sets")
    with exclusive(out):  # one writer per results folder
        return evaluate_model(spec, config.tasks, out, config, overwrite=overwrite,
                              name=config.subset or out.name, workspace=ws,
                              within=None if config.model and config.output else ws.root)


def report(summary: dict[str, Any]) -> None:
    """The one-screen summary of one model's evaluation."""
    print(results_table([summary]))
    status = (f"{summary['evaluated']} task(s) evaluated, {summary['skipped']} up to date"
              if "evaluated" in summary else "")
    print_summary("evaluate", [("model", summary["name"]), ("results", summary["results"]), ("tasks", status)])


def results_table(summaries: list[dict[str, Any]]) -> str:
    """One row per evaluated model: main metric per task (up to 8 tasks), then the group scores that have
    values; DataComp's Average only when all 38 scored tasks are there, else ``incomplete: N of 38 tasks``."""
    tasks = list(dict.fromkeys(t for s in summaries for t in s["tasks"]))
    groups = [g for g in GROUPS if any(s["groups"].get(g) is not None for s in summaries)]
    if len(tasks) > 8:  # a wide task list: groups only
        tasks = []
    datacomp = any(s["groups"].get("scored") for s in summaries)
    rows = []
    for s in summaries:
        row = [s["name"], *[_num(s["tasks"].get(t)) for t in tasks], *[_num(s["groups"].get(g)) for g in groups]]
        if datacomp:
            row.append(s["groups"]["Average"] if s["groups"].get("Average") is not None else s["groups"]["incomplete"])
        rows.append(row)
    return format_table(["model", *tasks, *groups, *(["Average"] if datacomp and all(
        s["groups"].get("Average") is not None for s in summaries) else ["DataComp average"] if datacomp else [])],
        rows)


def _num(v: Any) -> Any:
    return float("nan") if v is None else float(v)


STAGE = Stage("evaluate", EvalConfig, run=evaluate, report=report,
              reads=("runs/",), writes=("evals/",), per_subset=True)
