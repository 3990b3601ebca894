"""Train a fixed-budget CLIP on a resharded subset with open_clip's own training code.

``poolsieve train --subset NAME`` reads ``<workspace>/filtered/NAME/`` and writes ``<workspace>/runs/NAME/``
(open_clip's logs, params and checkpoints under ``<scale>_scale/``, and ``summary.json``). Every subset
trained at one scale sees the same number of samples (the scale's budget), whatever its size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from poolsieve.core.config import build
from poolsieve.core.progress import format_table, print_summary

from .scales import SCALES, scale_table
from .trainer import TrainConfig, train_clip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subset", action="append", help="subset(s) to train on, from filtered/NAME/ (repeatable)")
    p.add_argument("--data", type=Path, help="train on this webdataset folder instead of a subset")
    p.add_argument("--output", type=Path, help="run folder for --data (default: <workspace>/runs/<folder name>)")
    p.add_argument("--scale", choices=list(SCALES), help="training scale (default tiny)")
    p.add_argument("--samples-seen", type=int, help="override the scale's budget of samples seen")
    p.add_argument("--batch-size", type=int, help="override the scale's global batch size")
    p.add_argument("--lr", type=float, help="override the scale's learning rate")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--workers", type=int, help="data loader workers (default 1)")
    p.add_argument("--threads", type=int, help="torch threads of the trainer (default: torch's choice; "
                                               "1 is faster on a busy machine)")
    p.add_argument("--precision", help="open_clip precision: fp32 (CPU), amp, amp_bf16, ...")
    p.add_argument("--list-scales", action="store_true", help="print the scale table and exit")


def config_from(ctx: Any, args: argparse.Namespace) -> TrainConfig:
    return build(TrainConfig, ctx.section("train"), "train", {
        "scale": args.scale, "samples_seen": args.samples_seen, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "workers": args.workers, "threads": args.threads,
        "precision": args.precision})


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    from poolsieve.core.errors import ConfigError

    if args.list_scales:
        print(format_table(["scale", "model", "samples seen", "batch", "lr", "warmup"], scale_table()))
        return 0
    config = config_from(ctx, args)
    jobs: list[tuple[str, Path, Path]] = []
    if args.data is not None:
        out = args.output or ctx.workspace(create=True).run_dir(args.data.name)
        jobs.append((args.data.name, args.data, out))
    if args.subset:
        ws = ctx.workspace()
        jobs += [(name, ws.filtered_dir(name), ws.run_dir(name)) for name in args.subset]
    if not jobs:
        raise ConfigError("name what to train on: --subset NAME (from filtered/NAME/) or --data FOLDER")
    rows = []
    for name, data, out in jobs:
        s = train_clip(data, out, config, overwrite=ctx.overwrite, name=name)
        rows.append((name, s["dataset_size"], s["samples_seen"], s.get("final_loss") or float("nan"),
                     "skipped (done)" if s.get("skipped") else f"{s['seconds']:.0f}s", s["checkpoint"]))
    print(format_table(["subset", "size", "samples seen", "final loss", "time", "checkpoint"], rows))
    recipe = config.recipe()
    print_summary("train", [("scale", f"{recipe.name} ({recipe.model}, {recipe.samples_seen} samples seen, "
                                      f"batch {recipe.batch_size}, lr {recipe.learning_rate})"),
                            ("runs", len(rows))])
    return 0
