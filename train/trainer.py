"""Fixed-budget CLIP training on any webdataset folder, with open_clip's own training code.

``train_clip(data, out_dir, config)`` prepares the run folder (``run_folder.prepare_run``: the shards
listed (``shards``), the scale's budget turned into open_clip flags (``--train-num-samples`` per epoch
x ``--epochs``, sampling shards with replacement as DataComp does: ``budget``, ``config``)), runs
``open_clip_train.main`` (``open_clip_runner``) in one process, under torchrun (``gpus > 1``) or on
Ray Train workers (``launch``), and finishes the run folder: ``out_dir`` is a DataComp training
folder (``checkpoints/epoch_latest.pt``, ``info.pkl``; see ``checkpoints``) plus poolsieve's
``summary.json`` and ``train_config.json``. Paths in ``summary.json`` are relative to the run folder
(``load_summary`` resolves them), so a workspace copied elsewhere keeps working. A rerun of a
finished run is skipped; a killed run resumes from its newest whole checkpoint and ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError, PoolsieveError, PoolsieveWarning
from poolsieve.core.progress import Progress

from .budget import machine_cpus
from .checkpoints import prepare_resume
from .config import TrainConfig
from .launch import ray_plan, run_local, run_ray_train
from .run_folder import SUMMARY_FILE, finish_run, load_summary, prepare_run


def world_size_of(config: TrainConfig, ray: bool) -> int:
    if ray:
        return config.ray_workers or 1
    return (config.gpus or 1) * config.nodes


def check_gpus(config: TrainConfig) -> None:
    """``--gpus N`` on this machine: it must have N GPUs."""
    if not config.gpus:
        return
    import torch

    have = torch.cuda.device_count()
    if config.gpus > have:
        raise ConfigError(f"--gpus {config.gpus}: this machine has {have} GPU(s)")


def train_clip(data: str | Path | Sequence[str | Path], out_dir: str | Path, config: TrainConfig | None = None,
               *, overwrite: bool = False, name: str | None = None, runtime: Any = None,
               within: str | Path | None = None) -> dict[str, Any]:
    """Train a CLIP with a fixed budget on ``data`` (webdataset folder, tars, or folders joined by ``::``).

    Runs here (``config.gpus`` > 1: under torchrun), or on Ray Train workers when
    ``config.ray_workers`` is set or ``runtime`` names a Ray cluster. Returns the summary (also in
    ``out_dir/summary.json``, its paths there relative to ``out_dir``): checkpoint, samples seen,
    steps, epochs, dataset size, losses, seconds. ``overwrite`` first removes ``out_dir``, only once the
    input is checked and only if it is a run folder poolsieve wrote (inside ``within`` when given:
    ``core/owned_folders.py``).
    """
    config = config or TrainConfig()
    config.recipe()
    out_dir = Path(out_dir)
    use_ray = bool(config.ray_workers) or bool(runtime is not None and getattr(runtime, "address", None))
    if use_ray:
        config, gpu, cpus = ray_plan(config, runtime)
    else:
        check_gpus(config)
        gpu = bool(config.gpus)
        if config.gpus is None:
            import torch

            gpu = torch.cuda.is_available()
        cpus = machine_cpus() // (config.gpus or 1)
    setup = prepare_run(data, out_dir, config, world_size=world_size_of(config, use_ray), cpus=cpus, gpu=gpu,
                        name=name, overwrite=overwrite, within=within)
    out_dir = setup.out_dir
    summary_path = out_dir / SUMMARY_FILE
    if summary_path.exists():
        summary = load_summary(out_dir)
        if Path(summary.get("checkpoint", "")).exists():
            return dict(summary, skipped=True)
    done_epochs, note = prepare_resume(out_dir / "checkpoints")
    if note:
        warnings.warn(note, PoolsieveWarning, stacklevel=2)
    plan = setup.plan
    total_steps = plan.epochs * plan.steps_per_epoch
    done_before = done_epochs * plan.steps_per_epoch
    progress = Progress(f"train {name or out_dir.name}", total=total_steps, unit="steps")
    if done_before:
        progress.update(done_before)
    start = time.monotonic()
    if use_ray:
        run_ray_train(setup, config, runtime, gpu, progress, done_before)
    else:
        run_local(setup, config, progress, done_before)
    seconds = time.monotonic() - start
    progress.close()
    return finish_run(out_dir, seconds=seconds, resumed_samples=done_before * plan.batch_size)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "finish":
        sys.exit("usage: python -m poolsieve.train.trainer finish RUN_DIR")
    try:
        print(json.dumps({k: v for k, v in finish_run(sys.argv[2]).items() if k != "losses"}, indent=2))
    except PoolsieveError as e:
        sys.exit(f"poolsieve train: error: {e}")
