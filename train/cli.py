"""Train a fixed-budget CLIP on a resharded subset with open_clip's own training code.

``poolsieve train --subset NAME`` reads ``<workspace>/filtered/NAME/`` and writes ``<workspace>/runs/NAME/``,
a DataComp training folder (``checkpoints/epoch_latest.pt``, ``info.pkl``, open_clip's ``params.txt`` and
``out.log``) plus ``summary.json``. Every subset trained at one scale sees the same number of samples
(the scale's budget), whatever its size. ``--gpus N`` trains on N GPUs of this machine (torchrun),
``--ray-address``/``--ray-workers`` on a Ray cluster (Ray Train), ``--slurm-script`` writes an sbatch
script instead of training. A killed run resumes where its last checkpoint left off.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from poolsieve.core.config import build
from poolsieve.core.progress import format_table, print_summary

from .scales import SCALES, scale_table
from .trainer import TrainConfig, train_clip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subset", action="append", help="subset(s) to train on, from filtered/NAME/ (repeatable)")
    p.add_argument("--data", help="train on this webdataset folder instead of a subset; several joined by '::' "
                                  "are mixed (DataComp's --data_dir)")
    p.add_argument("--data-weights", help="sampling weights of the --data folders, joined by '::' (e.g. 1::2)")
    p.add_argument("--output", type=Path, help="run folder for --data (default: <workspace>/runs/<folder name>)")
    p.add_argument("--scale", choices=list(SCALES), help="training scale (default tiny)")
    p.add_argument("--samples-seen", type=int, help="override the scale's budget of samples seen")
    p.add_argument("--batch-size", type=int, help="override the scale's global batch size")
    p.add_argument("--lr", type=float, help="override the scale's learning rate")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--workers", type=int, help="data loader workers per process (default 4, DataComp's; "
                                               "fewer where the machine has fewer CPUs)")
    p.add_argument("--threads", type=int, help="torch threads of the trainer (default: torch's choice; "
                                               "1 is faster on a busy machine)")
    p.add_argument("--precision", help="open_clip precision (default: fp32 on CPU, amp on GPUs, amp_bf16 at xlarge)")
    p.add_argument("--gpus", type=int, help="GPUs of this machine to train on, one process each (torchrun)")
    p.add_argument("--ray-workers", type=int, help="train on this many Ray Train workers (default with "
                                                   "--ray-address: one per GPU of the cluster)")
    p.add_argument("--nodes", type=int, help="nodes for --slurm-script (each with --gpus GPUs)")
    p.add_argument("--slurm-script", type=Path, help="write an sbatch script for this run instead of training")
    p.add_argument("--keep-checkpoints", action="store_true", default=None,
                   help="keep every epoch's checkpoint (default: the last one and epoch_latest.pt)")
    p.add_argument("--list-scales", action="store_true", help="print the scale table and exit")


def config_from(ctx: Any, args: argparse.Namespace) -> TrainConfig:
    return build(TrainConfig, ctx.section("train"), "train", {
        "scale": args.scale, "samples_seen": args.samples_seen, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "workers": args.workers, "threads": args.threads, "precision": args.precision,
        "gpus": args.gpus, "ray_workers": args.ray_workers, "nodes": args.nodes,
        "data_weights": args.data_weights, "keep_checkpoints": args.keep_checkpoints})


def _jobs(ctx: Any, args: argparse.Namespace) -> list[tuple[str, str | Path, Path]]:
    from poolsieve.core.errors import ConfigError

    jobs: list[tuple[str, str | Path, Path]] = []
    if args.data is not None:
        first = Path(args.data.split("::")[0])
        name = first.name if "::" not in args.data else f"{first.name}-mix"
        out = args.output or ctx.workspace(create=True).run_dir(name)
        jobs.append((name, args.data, out))
    if args.subset:
        ws = ctx.workspace()
        jobs += [(name, ws.filtered_dir(name), ws.run_dir(name)) for name in args.subset]
    if not jobs:
        raise ConfigError("name what to train on: --subset NAME (from filtered/NAME/) or --data FOLDER")
    if args.data_weights and args.data is None:
        raise ConfigError("--data-weights needs --data a::b (the folders it weights)")
    return jobs


def write_slurm(config: TrainConfig, jobs: list[tuple[str, str | Path, Path]], path: Path) -> int:
    from poolsieve.core.errors import ConfigError

    from .launch import slurm_script, write_slurm_script
    from .trainer import prepare_run

    if len(jobs) != 1:
        raise ConfigError("--slurm-script writes one run's script: name one --subset or --data")
    name, data, out = jobs[0]
    world = (config.gpus or 1) * config.nodes
    setup = prepare_run(data, out, config, world_size=world, cpus=None, gpu=True, name=name)
    write_slurm_script(path, slurm_script(setup, config))
    print(f"wrote {path}: {config.nodes} node(s) x {config.gpus or 1} GPU(s), run folder {setup.out_dir}; "
          f"submit with `sbatch {path}`")
    return 0


def _writer_lock(ctx: Any, out: Path) -> contextlib.AbstractContextManager[Any]:
    """The workspace's writer lock of a run folder inside it (``Workspace.lock``), where there is one."""
    ws = ctx.workspace(create=True) if ctx.workspace_path else None
    lock = getattr(ws, "lock", None)
    if lock is None:
        return contextlib.nullcontext()
    try:
        return lock(str(Path(out).resolve().relative_to(ws.root)))
    except ValueError:  # a run folder outside the workspace (--output)
        return contextlib.nullcontext()


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    if args.list_scales:
        print(format_table(["scale", "model", "samples seen", "batch", "lr", "warmup"], scale_table()))
        return 0
    config = config_from(ctx, args)
    config.recipe()  # an unknown scale or a bad override stops here, before anything is read
    jobs = _jobs(ctx, args)
    if args.slurm_script:
        return write_slurm(config, jobs, args.slurm_script)
    rows = []
    for name, data, out in jobs:
        with _writer_lock(ctx, out):
            s = train_clip(data, out, config, overwrite=ctx.overwrite, name=name, runtime=ctx.runtime)
        rows.append((name, s["dataset_size"], s["samples_seen"], s.get("final_loss") or float("nan"),
                     "skipped (done)" if s.get("skipped") else f"{s['seconds']:.0f}s", s["checkpoint"]))
    print(format_table(["subset", "size", "samples seen", "final loss", "time", "checkpoint"], rows))
    recipe = config.recipe()
    print_summary("train", [("scale", f"{recipe.name} ({recipe.model}, {recipe.samples_seen} samples seen, "
                                      f"batch {recipe.batch_size}, lr {recipe.learning_rate})"),
                            ("runs", len(rows))])
    return 0
