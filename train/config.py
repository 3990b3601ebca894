"""The ``train:`` section (``TrainConfig``) and the open_clip flags a run's recipe and plan become.

Unset recipe fields come from the scale table (``scales.py``); ``TrainConfig.recipe`` applies the
overrides and checks that the budget trains exactly (``budget.py``). ``open_clip_args`` follows
DataComp's train.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from poolsieve.core import devices
from poolsieve.core.errors import ConfigError
from poolsieve.core.stage import option

from .budget import TrainingPlan, plan_budget
from .scales import DATACOMP_WORKERS, SCALES, Scale, get_scale


@dataclass
class TrainConfig:
    """The ``train:`` section; each option is also a flag (``samples_seen`` -> ``--samples-seen``).
    Unset recipe fields come from the scale table."""

    subset: str | None = option(None, "train on this subset, from filtered/NAME/ into runs/NAME/ (repeatable)")
    data: str | None = option(None, "train on this webdataset folder instead of a subset; several joined by '::' "
                                    "are mixed (DataComp's --data_dir)")
    output: str | None = option(None, "run folder for --data (default: <workspace>/runs/<folder name>)")
    scale: str = option("tiny", "training scale", choices=tuple(SCALES))
    samples_seen: int | None = option(None, "override the scale's budget of samples seen (trained exactly: whole "
                                            "batches in each checkpoint, else refused)")
    batch_size: int | None = option(None, "override the scale's global batch size")
    lr: float | None = option(None, "override the scale's learning rate")
    warmup: int | None = option(None, "override the scale's warmup steps")
    model: str | None = option(None, "override the scale's open_clip architecture")
    num_checkpoints: int | None = option(None, "override the scale's number of checkpoints (epochs)")
    seed: int = option(0, "random seed")
    workers: int = option(DATACOMP_WORKERS, "data loader workers per process (DataComp's; fewer where the "
                                            "machine has fewer CPUs)")
    threads: int | None = option(None, "torch threads of the trainer (default: torch's choice; 1 is faster "
                                       "on a busy machine)")
    gpus: int | None = option(None, "GPUs of this machine to train on, one process each (torchrun)")
    ray_workers: int | None = option(None, "train on this many Ray Train workers (default with --ray-address: "
                                           "one per GPU of the cluster)")
    nodes: int = option(1, "nodes for --slurm-script (each with --gpus GPUs)")
    slurm_script: str | None = option(None, "write an sbatch script for this run instead of training",
                                      metavar="FILE")
    precision: str = option("auto", "open_clip precision (auto: fp32 on CPU, amp on GPUs, amp_bf16 at xlarge)")
    accum_freq: int = option(1, "gradient accumulation steps")
    log_every_n_steps: int = option(10, "open_clip's log interval in steps")
    grad_clip_norm: float | None = option(None, "clip gradients to this norm")
    data_weights: str | None = option(None, "sampling weights of the --data folders, joined by '::' (e.g. 1::2)")
    keep_checkpoints: bool = option(False, "keep every epoch's checkpoint (default: the last one and "
                                           "epoch_latest.pt)")
    extra_args: list[str] = option([], "more open_clip flags, passed as given", cli=False)

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
        plan_budget(recipe.samples_seen, recipe.batch_size, recipe.num_checkpoints)  # exact, or refused here
        if self.workers < 0 or self.accum_freq < 1 or (self.threads is not None and self.threads < 1):
            raise ConfigError("train.workers must be >= 0, train.accum_freq >= 1 and train.threads >= 1")
        for name in ("gpus", "ray_workers", "nodes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {value}")
        return recipe


def open_clip_args(train_data: list[str], run_dir: Path, recipe: Scale, plan: TrainingPlan, config: TrainConfig,
                   workers: int, precision: str) -> list[str]:
    """The flags for ``open_clip_train.main``, following DataComp's train.py. ``train_data`` is
    ``["--train-data", ...]`` (plus factors) or the runner's data-file flag."""
    run_dir = run_dir.resolve()
    args = [
        *train_data,
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
        "--precision", precision,
        "--workers", str(workers),
        "--seed", str(config.seed),
        "--logs", str(run_dir.parent),
        "--name", run_dir.name,
        "--log-every-n-steps", str(config.log_every_n_steps),
        "--save-frequency", "1",
        "--save-most-recent",
        "--resume", "latest",
        "--report-to", "",
    ]
    if not config.keep_checkpoints:
        args += ["--delete-previous-checkpoint"]
    if recipe.beta2 is not None:
        args += ["--beta2", str(recipe.beta2)]
    if config.grad_clip_norm is not None:
        args += ["--grad-clip-norm", str(config.grad_clip_norm)]
    if recipe.model != "poolsieve-tiny":
        args += ["--grad-checkpointing"]
    if plan.world_size > 1:
        args += ["--ddp-static-graph", "--local-loss", "--gather-with-grad"]
    return args + list(config.extra_args)


def resolve_precision(precision: str, scale: str = "", gpu: bool | None = None) -> str:
    """``auto``: fp32 on CPU; on GPUs amp, or amp_bf16 at xlarge as DataComp's launcher does."""
    device = ("cuda" if gpu else "cpu") if gpu is not None else devices.resolve_device("auto")
    return devices.resolve_precision(precision, device, gpu_default="amp_bf16" if scale == "xlarge" else "amp")
