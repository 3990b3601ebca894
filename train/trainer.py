"""Fixed-budget CLIP training on any webdataset folder, with open_clip's own training code.

``train_clip(data, out_dir, config)`` lists the shards, turns the scale's budget into open_clip flags
(``--train-num-samples`` per epoch x ``--epochs``, sampling shards with replacement as DataComp
does), runs ``open_clip_train.main`` in a child process (``open_clip_runner``), follows its log for
progress and losses, and writes ``out_dir/summary.json``. The final checkpoint is open_clip's
``out_dir/<scale>_scale/checkpoints/epoch_<N>.pt``. A rerun with a finished summary is skipped; an
interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError, InputError, PoolsieveError
from poolsieve.core.formats import read_json, write_json
from poolsieve.core.progress import Progress

from .scales import Scale, get_scale

SUMMARY_FILE = "summary.json"


@dataclass
class TrainConfig:
    """The ``train:`` config section. Unset recipe fields come from the scale table."""

    scale: str = "tiny"
    samples_seen: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup: int | None = None
    model: str | None = None
    num_checkpoints: int | None = None
    seed: int = 0
    workers: int = 1
    threads: int | None = None  # torch intra-op threads of the trainer (None: torch's default)
    gpus: int | None = None  # > 1: one process per GPU through torchrun (DDP)
    precision: str = "auto"  # auto: amp on a GPU, fp32 on CPU
    accum_freq: int = 1
    log_every_n_steps: int = 10
    grad_clip_norm: float | None = None
    extra_args: list[str] = field(default_factory=list)

    def recipe(self) -> Scale:
        """The scale's recipe with this config's overrides applied."""
        base = get_scale(self.scale)
        recipe = Scale(
            name=base.name,
            model=self.model or base.model,
            samples_seen=self.samples_seen or base.samples_seen,
            batch_size=self.batch_size or base.batch_size,
            learning_rate=self.lr or base.learning_rate,
            warmup=base.warmup if self.warmup is None else self.warmup,
            beta2=base.beta2,
            num_checkpoints=self.num_checkpoints or base.num_checkpoints,
            weight_decay=base.weight_decay,
        )
        for name in ("samples_seen", "batch_size", "num_checkpoints"):
            if getattr(recipe, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(recipe, name)}")
        if self.workers < 0 or self.accum_freq < 1 or (self.threads is not None and self.threads < 1):
            raise ConfigError("train.workers must be >= 0, train.accum_freq >= 1 and train.threads >= 1")
        return recipe


@dataclass(frozen=True)
class TrainingPlan:
    """How a budget becomes open_clip's flags: ``epochs`` x ``steps_per_epoch`` optimizer steps of
    ``batch_size`` samples (global: ``per_process_batch`` x ``world_size`` x ``accum_freq``)."""

    epochs: int
    steps_per_epoch: int
    batch_size: int
    per_process_batch: int
    world_size: int = 1
    accum_freq: int = 1

    @property
    def samples_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size

    @property
    def samples_seen(self) -> int:
        return self.epochs * self.samples_per_epoch


def plan_budget(samples_seen: int, batch_size: int, epochs: int, world_size: int = 1,
                accum_freq: int = 1, workers: int = 1) -> TrainingPlan:
    """Split ``samples_seen`` into ``epochs`` of whole global batches, rounding up as open_clip does.

    open_clip rounds an epoch's loader batches up to a multiple of the data loader workers; the plan
    does the same, so the samples seen that it promises are the samples open_clip trains on.
    """
    per_process = batch_size // (world_size * accum_freq)
    if per_process < 1:
        raise ConfigError(f"batch size {batch_size} is smaller than world size x accumulation steps")
    global_batch = per_process * world_size * accum_freq
    steps = math.ceil(samples_seen / epochs / global_batch)
    while (steps * accum_freq) % max(1, workers):
        steps += 1
    return TrainingPlan(epochs, steps, global_batch, per_process, world_size, accum_freq)


# --------------------------------------------------------------------------------- input shards
def list_shards(data: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shards of a webdataset folder (``*.tar``) or an explicit list of tar files."""
    if isinstance(data, (str, Path)):
        folder = Path(data)
        if not folder.is_dir():
            if folder.suffix == ".tar" and folder.is_file():
                return [folder]
            raise InputError(folder, "training data folder does not exist (run `poolsieve reshard` first)")
        shards = sorted(p for p in folder.glob("*.tar") if not p.name.startswith("."))
        if not shards:
            raise InputError(folder, "no .tar shards in the training data folder")
        no_stats = [p for p in shards if not p.with_name(f"{p.stem}_stats.json").exists()]
        if 0 < len(no_stats) < len(shards):
            raise InputError(no_stats[0], "shard has no _stats.json while others do: the reshard is not finished "
                                          "(rerun `poolsieve reshard`)")
        return shards
    shards = [Path(p) for p in data]
    if not shards:
        raise InputError(None, "no training shards given")
    for p in shards:
        if not p.is_file():
            raise InputError(p, "training shard does not exist")
    return shards


def count_samples(shards: Sequence[Path]) -> int:
    """Samples in the shards: from each ``{shard}_stats.json`` when present, else by reading the tar."""
    import tarfile

    total = 0
    for shard in shards:
        stats = shard.with_name(f"{shard.stem}_stats.json")
        if stats.exists():
            data = read_json(stats)
            for key in ("successes", "num_samples", "count"):
                if isinstance(data, dict) and isinstance(data.get(key), int):
                    total += data[key]
                    break
            else:
                raise InputError(stats, "stats file has no sample count ('successes')")
            continue
        try:
            with tarfile.open(shard) as tar:
                keys = {m.name.rsplit(".", 1)[0] for m in tar if m.isfile() and m.name.endswith(".txt")}
        except (tarfile.TarError, OSError) as e:
            raise InputError(shard, f"not a readable tar file ({e})") from None
        total += len(keys)
    return total


# ----------------------------------------------------------------------------------- open_clip
def open_clip_args(shards: Sequence[Path], logs_dir: Path, exp_name: str, recipe: Scale, plan: TrainingPlan,
                   config: TrainConfig) -> list[str]:
    """The flags for ``open_clip_train.main``, following DataComp's train.py."""
    args = [
        "--train-data", "::".join(str(p) for p in shards),
        "--train-num-samples", str(plan.samples_per_epoch),
        "--dataset-type", "webdataset",
        "--dataset-resampled",
        "--epochs", str(plan.epochs),
        "--batch-size", str(plan.per_process_batch),
        "--accum-freq", str(config.accum_freq),
        "--lr", str(recipe.learning_rate),
        "--wd", str(recipe.weight_decay),
        "--warmup", str(recipe.warmup),
        "--model", recipe.model,
        "--precision", resolve_precision(config.precision),
        "--workers", str(config.workers),
        "--seed", str(config.seed),
        "--logs", str(logs_dir),
        "--name", exp_name,
        "--log-every-n-steps", str(config.log_every_n_steps),
        "--save-frequency", "1",
        "--delete-previous-checkpoint",
        "--resume", "latest",
        "--report-to", "",
    ]
    if recipe.beta2 is not None:
        args += ["--beta2", str(recipe.beta2)]
    if config.grad_clip_norm is not None:
        args += ["--grad-clip-norm", str(config.grad_clip_norm)]
    if recipe.model != "poolsieve-tiny":
        args += ["--grad-checkpointing"]
    if plan.world_size > 1:
        args += ["--ddp-static-graph", "--local-loss", "--gather-with-grad"]
    return args + list(config.extra_args)


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    import torch

    return "amp" if torch.cuda.is_available() else "fp32"


_TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\](.*)")
_LOSS = re.compile(r"(\w+_loss|Loss): ([0-9.eE+-]+) \(([0-9.eE+-]+)\)")


def parse_train_line(line: str) -> dict[str, Any] | None:
    """``Train Epoch: 0 [640/1280 (50%)] ... Contrastive_loss: 3.1 (3.4) ...`` -> a dict, else None."""
    m = _TRAIN_LINE.search(line)
    if not m:
        return None
    losses = {name.lower(): float(val) for name, val, _ in _LOSS.findall(m.group(5))}
    return {"epoch": int(m.group(1)), "epoch_samples": int(m.group(2)), "samples_per_epoch": int(m.group(3)),
            "loss": losses.get("loss", sum(losses.values())) if losses else None,
            "losses": {k: v for k, v in losses.items() if k != "loss"}}


def final_checkpoint(run_dir: Path, exp_name: str, epochs: int) -> Path:
    return run_dir / exp_name / "checkpoints" / f"epoch_{epochs}.pt"


def runner_command(argv: list[str], gpus: int | None = None) -> list[str]:
    """The child process: the runner module, under torchrun (one process per GPU) when ``gpus > 1``."""
    launcher = [sys.executable]
    if gpus and gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return [*launcher, "-m", "poolsieve.train.open_clip_runner", *argv]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed ``poolsieve train`` leaves no trainer behind."""
    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes
        import signal

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_open_clip(argv: list[str], log_path: Path, progress: Progress, plan: TrainingPlan,
                   done_before: int, config: TrainConfig) -> list[dict[str, Any]]:
    """Run the runner as a child process; return the parsed training log lines."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    if config.threads:
        env["OMP_NUM_THREADS"] = str(config.threads)
    cmd = runner_command(argv, config.gpus)
    records: list[dict[str, Any]] = []
    tail: list[str] = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    steps_done = done_before
    with open(log_path, "a") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, env=env, preexec_fn=_die_with_parent) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                rec = parse_train_line(line)
                if rec is None:
                    continue
                records.append(rec)
                step = rec["epoch"] * plan.steps_per_epoch + rec["epoch_samples"] // plan.batch_size
                if step > steps_done:
                    progress.update(step - steps_done, (step - steps_done) * plan.batch_size)
                    steps_done = step
        except BaseException:
            proc.kill()
            raise
        rc = proc.wait()
    if rc != 0:
        raise PoolsieveError(f"open_clip training failed (exit {rc}); log {log_path}; last lines:\n"
                             + "\n".join(tail[-15:]))
    return records


def train_clip(data: str | Path | Sequence[str | Path], out_dir: str | Path, config: TrainConfig | None = None,
               *, overwrite: bool = False, name: str | None = None) -> dict[str, Any]:
    """Train a CLIP with a fixed budget on ``data`` (webdataset folder or tars) into ``out_dir``.

    Returns the summary (also written to ``out_dir/summary.json``): checkpoint, samples seen,
    steps, epochs, dataset size, losses, seconds.
    """
    config = config or TrainConfig()
    recipe = config.recipe()
    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir)
    shards = list_shards(data)
    dataset_size = count_samples(shards)
    if dataset_size == 0:
        raise InputError(shards[0].parent, "training shards hold no samples")
    plan = plan_budget(recipe.samples_seen, recipe.batch_size, recipe.num_checkpoints, config.gpus or 1,
                       config.accum_freq, config.workers)
    exp_name = f"{recipe.name}_scale"
    checkpoint = final_checkpoint(out_dir, exp_name, plan.epochs)
    argv = open_clip_args(shards, out_dir, exp_name, recipe, plan, config)
    config_path = out_dir / "train_config.json"
    if config_path.exists() and read_json(config_path).get("open_clip_args") != argv:
        raise ConfigError(f"{out_dir} holds a run with other data or settings; pass --overwrite to replace it")
    summary = read_json(summary_path) if summary_path.exists() else {}
    if summary and Path(summary.get("checkpoint", "")).exists():
        return dict(summary, skipped=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, {"config": asdict(config), "recipe": asdict(recipe),
                                               "plan": asdict(plan), "open_clip_args": argv})
    total_steps = plan.epochs * plan.steps_per_epoch
    done_before = _resumed_steps(out_dir / exp_name / "checkpoints", plan)
    progress = Progress(f"train {name or out_dir.name}", total=total_steps, unit="steps")
    if done_before:
        progress.update(done_before)
    start = time.monotonic()
    records = _run_open_clip(argv, out_dir / "train.log", progress, plan, done_before, config)
    seconds = time.monotonic() - start
    progress.close()
    if not checkpoint.exists():
        raise PoolsieveError(f"open_clip finished without writing {checkpoint}; see {out_dir / 'train.log'}")
    losses = [{"samples_seen": r["epoch"] * plan.samples_per_epoch + r["epoch_samples"], "loss": r["loss"],
               **r["losses"]} for r in records]
    last_per_epoch = {r["epoch"]: r for r in records}
    samples_seen = sum(r["epoch_samples"] for r in last_per_epoch.values())
    if done_before:  # epochs finished before an interruption are not in this run's log lines
        samples_seen += sum(plan.samples_per_epoch for e in range(plan.epochs) if e not in last_per_epoch)
    summary = {
        "name": name or out_dir.name,
        "data": [str(p) for p in shards],
        "dataset_size": dataset_size,
        "scale": recipe.name,
        "model": recipe.model,
        "checkpoint": str(checkpoint),
        "samples_seen": samples_seen,
        "budget": recipe.samples_seen,
        "epochs": plan.epochs,
        "steps": total_steps,
        "batch_size": plan.batch_size,
        "learning_rate": recipe.learning_rate,
        "passes_over_data": round(samples_seen / dataset_size, 3),
        "final_loss": losses[-1]["loss"] if losses else None,
        "losses": losses,
        "seconds": round(seconds, 1),
        "samples_per_second": round((samples_seen - done_before * plan.batch_size) / max(seconds, 1e-9), 1),
        "seed": config.seed,
    }
    write_json(summary_path, summary)
    return summary


def _resumed_steps(checkpoint_dir: Path, plan: TrainingPlan) -> int:
    """Steps already done by an interrupted run (whole epochs in its last checkpoint)."""
    if not checkpoint_dir.is_dir():
        return 0
    epochs = [int(m.group(1)) for p in checkpoint_dir.glob("epoch_*.pt")
              if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))]
    return max(epochs, default=0) * plan.steps_per_epoch


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        raise InputError(path, "no finished training run here (run `poolsieve train` first)")
    return json.loads(path.read_text())
