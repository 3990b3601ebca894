"""Zero-shot evaluation of a trained model on DataComp's tasks or the synthetic held-out tasks.

``poolsieve evaluate --subset NAME`` evaluates the final checkpoint of ``<workspace>/runs/NAME/`` and
writes ``<workspace>/evals/NAME/results.jsonl`` (one line per task) and ``summary.json`` (group
averages). ``--tasks`` takes ``synthetic`` (default), ``datacomp38``, or a comma list of task keys.
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
    p.add_argument("--model", help="evaluate this model instead: ARCH[:PRETRAINED_OR_CHECKPOINT]")
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
    from poolsieve.core.models import ModelSpec

    config = build(EvalConfig, ctx.section("evaluate"), "evaluate", {
        "tasks": args.tasks, "data_root": args.data_root, "batch_size": args.batch_size,
        "synthetic_samples": args.synthetic_samples, "device": args.device,
        "trust_checkpoint": args.trust_checkpoint})
    jobs: list[tuple[str, ModelSpec, Path]] = []
    if args.model:
        spec = ModelSpec.parse(args.model)
        out = args.output or ctx.workspace(create=True).eval_dir(spec.arch)
        jobs.append((out.name, spec, out))
    if args.subset:
        ws = ctx.workspace()
        for name in args.subset:
            arch, checkpoint = checkpoint_of_run(ws.run_dir(name))
            jobs.append((name, ModelSpec(arch, checkpoint), ws.eval_dir(name)))
    if not jobs:
        raise ConfigError("name what to evaluate: --subset NAME (a run in runs/NAME/) or --model ARCH:CHECKPOINT")
    summaries = []
    for name, spec, out in jobs:
        with exclusive(out):  # one writer per results folder
            summaries.append(evaluate_model(spec, config.tasks, out, config, overwrite=ctx.overwrite, name=name))
    print(results_table(summaries))
    print_summary("evaluate", [("tasks", config.tasks), ("results", ", ".join(s["results"] for s in summaries))])
    return 0


def results_table(summaries: list[dict[str, Any]]) -> str:
    """One row per evaluated model: main metric per task, then group averages that have values."""
    tasks = list(dict.fromkeys(t for s in summaries for t in s["tasks"]))
    groups = [g for g in (*GROUPS, "Average") if any(s["groups"].get(g) is not None for s in summaries)]
    if len(tasks) > 8:  # a wide task list: groups only
        tasks = []
    rows = [[s["name"], *[_num(s["tasks"].get(t)) for t in tasks], *[_num(s["groups"].get(g)) for g in groups]]
            for s in summaries]
    return format_table(["model", *tasks, *groups], rows)


def _num(v: Any) -> Any:
    return float("nan") if v is None else float(v)

