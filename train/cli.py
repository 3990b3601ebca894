"""The train stage: a fixed-budget CLIP on a resharded subset with open_clip's own training code.

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

from poolsieve.core.errors import ConfigError
from poolsieve.core.locks import exclusive
from poolsieve.core.names import check_name
from poolsieve.core.progress import format_table, print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage
from poolsieve.core.workspace import Workspace

from .config import TrainConfig
from .launch import slurm_script, write_slurm_script
from .run_folder import prepare_run
from .scales import scale_table
from .trainer import train_clip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI-only flags (the options come from ``TrainConfig``)."""
    p.add_argument("--list-scales", action="store_true", help="print the scale table and exit")


def cli_action(ctx: Any, args: argparse.Namespace) -> int | None:
    """``--list-scales`` prints the table and ends the command; otherwise the stage runs (a run of
    ``--data`` may start a new workspace, where its run folder goes)."""
    if args.list_scales:
        print(format_table(["scale", "model", "samples seen", "batch", "lr", "warmup"], scale_table()))
        print("samples seen: what a run trains, exactly (DataComp's budgets as its launcher trains them: 12.8M at "
              "small is 5 epochs of 628 batches of 4,096); --samples-seen must be a whole number of batches in "
              "each checkpoint (epoch), or it is refused with the nearest budgets that work")
        return 0
    for subset in args.subset or []:  # every name checked before any run starts (or removes anything)
        check_name(subset, "subset name")
    if args.data and ctx.workspace_path is not None:
        ctx.workspace(create=True)
    return None


def job(ws: Workspace, config: TrainConfig) -> tuple[str, str, Path]:
    """(run name, training data, run folder) of one config: a subset, or ``--data`` folders."""
    if config.subset and config.data:
        raise ConfigError("name one thing to train on: --subset NAME or --data FOLDER, not both")
    if config.data_weights and not config.data:
        raise ConfigError("--data-weights needs --data a::b (the folders it weights)")
    if config.subset:
        name = check_name(config.subset, "subset name")
        return name, str(ws.filtered_dir(name)), ws.run_dir(name)
    if config.data:
        first = Path(config.data.split("::")[0])
        name = check_name(first.name if "::" not in config.data else f"{first.name}-mix",
                          "run name (the --data folder's name)")
        return name, config.data, Path(config.output).expanduser() if config.output else ws.run_dir(name)
    raise ConfigError("name what to train on: --subset NAME (from filtered/NAME/) or --data FOLDER")


def _writer_lock(ws: Workspace, out: Path) -> contextlib.AbstractContextManager[Any]:
    """The writer's lock of a run folder: the workspace's for one inside it, the folder's own
    (``.NAME.lock`` beside it) for one elsewhere (``--output``)."""
    try:
        return ws.lock(str(out.resolve().relative_to(ws.root)))
    except ValueError:
        return exclusive(out)


def write_slurm(config: TrainConfig, name: str, data: str, out: Path) -> dict[str, Any]:
    world = (config.gpus or 1) * config.nodes
    setup = prepare_run(data, out, config, world_size=world, cpus=None, gpu=True, name=name)
    path = Path(config.slurm_script or "")
    write_slurm_script(path, slurm_script(setup, config))
    return {"name": name, "slurm_script": str(path), "nodes": config.nodes, "gpus": config.gpus or 1,
            "run_dir": str(setup.out_dir)}


def train(ws: Workspace, config: TrainConfig, runtime: Runtime | None = None, *,
          overwrite: bool = False) -> dict[str, Any]:
    """Train one run (a subset's, or ``--data``'s) and return its summary; ``--slurm-script`` writes
    the job script instead."""
    config.recipe()  # an unknown scale or a bad override stops here, before anything is read
    name, data, out = job(ws, config)
    if config.slurm_script:
        return write_slurm(config, name, data, out)
    with _writer_lock(ws, out):
        summary = train_clip(data, out, config, overwrite=overwrite, name=name, runtime=runtime,
                             within=None if config.output else ws.root)
    return dict(summary, scale_recipe=_recipe_line(config))


def _recipe_line(config: TrainConfig) -> str:
    r = config.recipe()
    return f"{r.name} ({r.model}, {r.samples_seen:,} samples seen, batch {r.batch_size}, lr {r.learning_rate})"


def report(s: dict[str, Any]) -> None:
    """The one-screen summary of a training run (or of a written SLURM script)."""
    if "slurm_script" in s:
        print(f"wrote {s['slurm_script']}: {s['nodes']} node(s) x {s['gpus']} GPU(s), run folder {s['run_dir']}; "
              f"submit with `sbatch {s['slurm_script']}`")
        return
    time = "skipped (done)" if s.get("skipped") else f"{s['seconds']:.0f}s"
    final = s.get("final_loss")
    print(format_table(["subset", "size", "samples seen", "final loss", "time", "checkpoint"],
                       [(s["name"], s["dataset_size"], s["samples_seen"], float("nan") if final is None else final,
                         time, s["checkpoint"])]))
    print_summary("train", [("scale", s.get("scale_recipe", s.get("scale"))), ("run", s["name"]),
                            ("status", "up to date (finished before)" if s.get("skipped") else "trained")])


STAGE = Stage("train", TrainConfig,
              run=train, report=report, reads=("filtered/",), writes=("runs/",), per_subset=True)
