"""Zero-shot evaluation of a trained model on DataComp's tasks, the synthetic tasks or the user's own.

``poolsieve evaluate --subset NAME`` evaluates the final checkpoint of ``<workspace>/runs/NAME/`` and
writes ``<workspace>/evals/NAME/eval_results.jsonl`` (DataComp's file, one line per task),
``other_results.jsonl`` (other tasks) and ``summary.json`` (DataComp's group scores and Average).
``--tasks`` takes ``synthetic`` (default), ``datacomp38``, task keys, task folders or names registered
under ``evaluate: custom_tasks:``. ``--download DIR`` fetches DataComp's evaluation sets into DIR in the
layout of DataComp's ``download_evalsets.py``; ``--data-root DIR`` reads them from there.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from poolsieve.core.config import build
from poolsieve.core.locks import exclusive
from poolsieve.core.progress import format_table, print_summary

from .evaluator import EvalConfig, evaluate_model
from .tasks import GROUPS, TASK_SETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subset", action="append", help="evaluate the run of this subset (repeatable)")
    p.add_argument("--model", help="evaluate this model instead: ARCH, ARCH:PRETRAINED_TAG, ARCH:/path/ckpt.pt "
                                   "or hf-hub:ORG/NAME")
    p.add_argument("--model-config", action="append", type=Path,
                   help="register an open_clip model config JSON (its file name is the architecture name)")
    p.add_argument("--download", type=Path, metavar="DIR",
                   help="fetch the evaluation sets of --tasks (default datacomp38) into DIR, as DataComp's "
                        "download_evalsets.py lays them out; resumes a partial download")
    p.add_argument("--output", type=Path, help="results folder for --model (default <workspace>/evals/<arch>)")
    p.add_argument("--tasks", help=f"task set ({', '.join(TASK_SETS)}) or comma list of task keys")
    p.add_argument("--data-root", help="local folder (or mirror url) with the wds_<task>_test datasets; "
                                       "default: the Hugging Face hub at $HF_ENDPOINT")
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default 64)")
    p.add_argument("--synthetic-samples", type=int, help="images per synthetic task (default 600)")
    p.add_argument("--device", help="cpu, cuda or auto (default)")
    p.add_argument("--trust-checkpoint", action="store_true", default=None,
                   help="load a checkpoint that needs full unpickling (can run code in it; default: weights only)")


def checkpoint_of_run(run_dir: Path) -> tuple[str, str]:
    """(arch, checkpoint path) of a finished training run."""
    from poolsieve.train.trainer import load_summary

    s = load_summary(run_dir)
    return s["model"], s["checkpoint"]


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    from poolsieve.core.errors import ConfigError
    from poolsieve.core.models import ModelSpec, register_model_config

    for path in args.model_config or []:
        register_model_config(path)
    if args.download:
        from .download import download_evalsets

        downloaded = download_evalsets(args.download, args.tasks or "datacomp38")
        if not (args.model or args.subset):
            return 1 if downloaded["failed"] else 0
        if downloaded["failed"]:
            raise ConfigError(f"{len(downloaded['failed'])} evaluation set(s) failed to download")
        args.data_root = args.data_root or str(args.download)
    config = build(EvalConfig, ctx.section("evaluate"), "evaluate", {
        "tasks": args.tasks, "data_root": args.data_root, "batch_size": args.batch_size,
        "synthetic_samples": args.synthetic_samples, "device": args.device,
        "trust_checkpoint": args.trust_checkpoint})
    jobs: list[tuple[str, ModelSpec, Path]] = []
    if args.model:
        spec = ModelSpec.parse(args.model)
        safe = spec.arch.replace("hf-hub:", "").replace("local-dir:", "").replace("/", "__").strip("_.") or "model"
        out = args.output or ctx.workspace(create=True).eval_dir(safe)
        jobs.append((out.name, spec, out))
    if args.subset:
        ws = ctx.workspace()
        for name in args.subset:
            arch, checkpoint = checkpoint_of_run(ws.run_dir(name))
            jobs.append((name, ModelSpec(arch, checkpoint), ws.eval_dir(name)))
    if not jobs:
        raise ConfigError("name what to evaluate: --subset NAME (a run in runs/NAME/), --model ARCH:CHECKPOINT, "
                          "or --download DIR alone to fetch the evaluation sets")
    summaries = []
    for name, spec, out in jobs:
        with exclusive(out):  # one writer per results folder
            summaries.append(evaluate_model(spec, config.tasks, out, config, overwrite=ctx.overwrite, name=name))
    print(results_table(summaries))
    print_summary("evaluate", [("tasks", config.tasks), ("results", ", ".join(s["results"] for s in summaries))])
    return 0


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
