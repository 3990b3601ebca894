"""Fixed-budget CLIP training on any webdataset folder, with open_clip's own training code.

``train_clip(data, out_dir, config)`` lists the shards, turns the scale's budget into open_clip flags
(``--train-num-samples`` per epoch x ``--epochs``, sampling shards with replacement as DataComp
does), runs ``open_clip_train.main`` (``open_clip_runner``) in one process, under torchrun
(``gpus > 1``) or on Ray Train workers (``launch``), and finishes the run folder: ``out_dir`` is a
DataComp training folder (``checkpoints/epoch_latest.pt``, ``info.pkl``; see ``checkpoints``) plus
poolsieve's ``summary.json`` and ``train_config.json``. Paths in ``summary.json`` are relative to
the run folder (``load_summary`` resolves them), so a workspace copied elsewhere keeps working.
A rerun of a finished run is skipped; a killed run resumes from its newest whole checkpoint and
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from poolsieve.core import devices
from poolsieve.core.errors import ConfigError, InputError, PoolsieveError, PoolsieveWarning
from poolsieve.core.formats import atomic_path, read_json, write_json
from poolsieve.core.owned_folders import remove_owned
from poolsieve.core.processes import die_with_parent
from poolsieve.core.progress import Progress
from poolsieve.core.stage import option
from poolsieve.core.workspace import is_whole_shard, shard_stats_path

from .checkpoints import LATEST, info_model, prepare_resume, read_epoch, write_info, write_open_clip_folder
from .launch import ray_plan, run_ray_train
from .open_clip_runner import ERROR_PREFIX
from .runner_io import parse_train_line, runner_env
from .scales import DATACOMP_WORKERS, SCALES, Scale, get_scale
from .shards import ARG_LIMIT, DATA_FILE_FLAG, Source, train_data_string

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "train_config.json"
DATA_FILE = "train_data.txt"
RUN_RECORDS = (CONFIG_FILE, SUMMARY_FILE, DATA_FILE)  # a folder holding one of them is a run poolsieve wrote


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
                accum_freq: int = 1) -> TrainingPlan:
    """Split ``samples_seen`` into ``epochs`` of whole global batches, exactly, or refuse.

    open_clip trains whole batches and epochs of equal length, so a budget is honoured exactly when it is
    a multiple of ``epochs x batch_size``; any other budget is refused in one line that names the nearest
    budgets that work (never rounded: the samples seen a run reports are the budget it was given). The
    data-loader workers then divide each epoch's batches (``loader_workers``), so open_clip's per-worker
    rounding adds nothing either.
    """
    if batch_size % (world_size * accum_freq):
        raise ConfigError(f"the global batch of {batch_size} cannot be split over {world_size} process(es) x "
                          f"{accum_freq} accumulation step(s); choose a world size that divides it")
    if samples_seen % (epochs * batch_size):
        raise ConfigError(budget_refusal(samples_seen, batch_size, epochs))
    per_process = batch_size // (world_size * accum_freq)
    return TrainingPlan(epochs, samples_seen // (epochs * batch_size), batch_size, per_process, world_size,
                        accum_freq)


def budget_refusal(samples_seen: int, batch_size: int, epochs: int) -> str:
    """Why ``samples_seen`` cannot be trained exactly, with the nearest budgets and checkpoint counts that work."""
    unit = epochs * batch_size
    below, above = samples_seen // unit * unit, (samples_seen // unit + 1) * unit
    nearest = f"{below:,} or {above:,}" if below else f"{above:,}"
    text = (f"a budget of {samples_seen:,} samples seen cannot be trained exactly: {epochs} checkpoint(s) "
            f"(epochs) of whole batches of {batch_size:,} take a multiple of {unit:,}; the nearest budgets that "
            f"work are {nearest} (--samples-seen)")
    if samples_seen % batch_size == 0:  # whole batches: other checkpoint counts split them evenly
        steps = samples_seen // batch_size
        counts = sorted((d for d in range(1, min(steps, 4 * epochs + 4) + 1) if steps % d == 0),
                        key=lambda d: (abs(d - epochs), d))[:4]
        shown = [str(d) for d in sorted(counts)]
        text += f", or {samples_seen:,} with --num-checkpoints " + (", ".join(shown[:-1]) + " or " if shown[:-1] else "") + shown[-1]
    return text


def loader_workers(requested: int, plan: TrainingPlan, cpus: int | None = None) -> int:
    """The data-loader workers to start: at most ``requested`` and the CPUs (None: as requested, for
    another machine), and dividing the epoch's loader batches, so open_clip's rounding of an epoch up to
    whole batches per worker adds nothing to the plan's samples seen."""
    if requested <= 0:
        return 0
    batches = plan.steps_per_epoch * plan.accum_freq
    most = requested if cpus is None else min(requested, max(1, cpus))
    return next(w for w in range(most, 0, -1) if batches % w == 0)


def fewer_workers_note(workers: int, requested: int, plan: TrainingPlan, cpus: int | None) -> str:
    """The warning for fewer data-loader workers than asked: why, and the budgets that would allow them."""
    most = requested if cpus is None else min(requested, max(1, cpus))
    text = (f"{workers} data-loader worker(s) per process instead of {requested} "
            + (f"({cpus} CPU(s) each; " if cpus is not None else "(")
            + f"an epoch's {plan.steps_per_epoch * plan.accum_freq} batches split evenly over them); samples seen "
              f"stay {plan.samples_seen:,}")
    if workers < most:  # the budget, not the machine, decided: say which budgets give the workers
        unit = plan.epochs * plan.batch_size * most // math.gcd(most, plan.accum_freq)
        below, above = plan.samples_seen // unit * unit, (plan.samples_seen // unit + 1) * unit
        text += f"; {most} workers need a budget that is a multiple of {unit:,}, e.g. " + \
            (f"{below:,} or {above:,}" if below else f"{above:,}")
    return text


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
        no_stats = [p for p in shards if not is_whole_shard(p)]
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


def data_sources(data: str | Path | Sequence[str | Path], weights: str | None = None) -> list[Source]:
    """``data`` as sources: a folder, a tar list, or folders joined by ``::`` (DataComp's ``--data_dir``),
    each with its weight from ``weights`` (``1::2``)."""
    parts: list[Any] = str(data).split("::") if isinstance(data, (str, Path)) else [data]
    if weights is None:
        return [Source(tuple(list_shards(p))) for p in parts]
    values = str(weights).split("::")
    if len(values) != len(parts):
        raise ConfigError(f"{len(values)} data weight(s) ({weights}) for {len(parts)} data folder(s)")
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"data weights must be numbers joined by '::', got {weights!r}") from None
    if any(not math.isfinite(w) or w <= 0 for w in numbers):
        raise ConfigError(f"data weights must be positive, got {weights!r}")
    return [Source(tuple(list_shards(p)), w) for p, w in zip(parts, numbers, strict=True)]


def count_samples(shards: Sequence[Path]) -> int:
    """Samples in the shards: from each ``{shard}_stats.json`` when present, else by reading the tar."""
    total = 0
    for shard in shards:
        stats = shard_stats_path(shard)
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


# --------------------------------------------------------------------------------- a run folder
@dataclass
class RunSetup:
    """Everything a launcher needs: the run folder, open_clip's flags, the plan."""

    out_dir: Path
    argv: list[str]
    recipe: Scale
    plan: TrainingPlan
    workers: int
    record: dict[str, Any]


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


def prepare_run(data: str | Path | Sequence[str | Path], out_dir: str | Path, config: TrainConfig, *,
                world_size: int, cpus: int | None, gpu: bool, name: str | None = None,
                overwrite: bool = False, within: str | Path | None = None) -> RunSetup:
    """Check the input, plan the budget and write ``train_config.json`` (and the shard list when long).

    ``cpus``: CPUs for each process's data-loader workers (None: as asked, for another machine).
    ``overwrite``: once everything is checked, remove the run folder first, only if poolsieve wrote it
    (inside ``within`` when given: ``core/owned_folders.py``).
    """
    recipe = config.recipe()
    given, out_dir = Path(out_dir), Path(out_dir).resolve()
    sources = data_sources(data, config.data_weights)
    shards = [s for src in sources for s in src.shards]
    dataset_size = count_samples(shards)
    if dataset_size == 0:
        raise InputError(shards[0].parent, "training shards hold no samples")
    if world_size > 1 and len(shards) < world_size:
        raise InputError(shards[0].parent, f"{len(shards)} shard(s) cannot be split over {world_size} training "
                                           "processes (each reads its own shards)")
    plan = plan_budget(recipe.samples_seen, recipe.batch_size, recipe.num_checkpoints, world_size,
                       config.accum_freq)
    workers = loader_workers(config.workers, plan, cpus)
    if workers < config.workers:
        warnings.warn(fewer_workers_note(workers, config.workers, plan, cpus), PoolsieveWarning, stacklevel=2)
    train_data, factors = train_data_string(sources)
    if overwrite:  # every check above passed: nothing is removed for a bad input
        remove_owned(given, RUN_RECORDS, inside=within, what="run folder")  # the path as given: a link is refused
    data_flags = ["--train-data", train_data] + (["--train-data-upsampling-factors", factors] if factors else [])
    if sum(len(a) for a in data_flags) > ARG_LIMIT:
        data_file = out_dir / DATA_FILE
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(data_file) as tmp:
            tmp.write_text(train_data + "\n" + (factors + "\n" if factors else ""))
        data_flags = [DATA_FILE_FLAG, str(data_file)]
    argv = open_clip_args(data_flags, out_dir, recipe, plan, config, workers,
                          resolve_precision(config.precision, recipe.name, gpu))
    folders = [os.path.relpath(p, out_dir) for p in (str(data).split("::") if isinstance(data, (str, Path))
                                                       else sorted({str(s.parent) for s in shards}))]
    record = {
        "name": name or out_dir.name, "data": folders, "data_weights": config.data_weights,
        "shards": len(shards), "dataset_size": dataset_size,
        "train_data_sha256": _sha256(portable(train_data, out_dir), factors),
        "config": {k: v for k, v in asdict(config).items() if k not in WHERE_FIELDS},
        "recipe": asdict(recipe), "plan": asdict(plan),
        "open_clip_args": [portable(a, out_dir) for a in argv],
    }
    config_path = out_dir / CONFIG_FILE
    if config_path.exists():
        before = read_json(config_path)
        if (before.get("train_data_sha256") != record["train_data_sha256"]
                or _comparable(before, out_dir) != _comparable(record, out_dir)):
            raise ConfigError(f"{out_dir} holds a run with other data or settings; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, record)
    return RunSetup(out_dir, argv, recipe, plan, workers, record)


# config fields that say where a run goes, not what it is (absent from train_config.json)
WHERE_FIELDS = ("subset", "data", "output", "slurm_script")


def _sha256(train_data: str, factors: str | None) -> str:
    return hashlib.sha256((train_data + "|" + (factors or "")).encode()).hexdigest()


def portable(arg: str, run_dir: Path) -> str:
    """An open_clip argument as ``train_config.json`` stores it: absolute paths (alone or joined by
    ``::``) inside the run's workspace (``runs/NAME/../..``) relative to the run folder, so a workspace
    copied or mounted elsewhere holds the same record."""
    base = run_dir.parent.parent

    def one(part: str) -> str:
        if os.path.isabs(part) and Path(part).is_relative_to(base):
            return os.path.relpath(part, run_dir)
        return part

    return "::".join(one(p) for p in arg.split("::"))


def _comparable(record: dict[str, Any], run_dir: Path) -> list[str]:
    """What must match for a rerun to continue a run: data and recipe (wherever the workspace is now),
    not the machine's worker count."""
    args = [portable(a, run_dir) for a in record.get("open_clip_args") or []]
    if "--workers" in args:
        i = args.index("--workers")
        del args[i:i + 2]
    return args


# ------------------------------------------------------------------------------------ launching
def runner_command(argv: list[str], gpus: int | None = None) -> list[str]:
    """The child process: the runner module, under torchrun (one process per GPU) when ``gpus > 1``."""
    launcher = [sys.executable]
    if gpus and gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return [*launcher, "-m", "poolsieve.train.open_clip_runner", *argv]


def failure_line(lines: Sequence[str], what: str, log_path: Path) -> str:
    """One line for a failed run: the runner's own error line, else the last line that says error."""
    for line in reversed(lines):
        if ERROR_PREFIX in line:
            return line.split(ERROR_PREFIX, 1)[1].strip()
    last = next((ln.strip() for ln in reversed(lines) if re.search(r"error|exception", ln, re.I)),
                next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output"))
    return f"{what} failed: {last[:300]} (log: {log_path})"


def _run_local(setup: RunSetup, config: TrainConfig, progress: Progress, done_before: int) -> None:
    """Run the runner (under torchrun for several GPUs) as a child process, following its log."""
    env = dict(os.environ, **runner_env(config.threads))
    cmd = runner_command(setup.argv, config.gpus)
    log_path = setup.out_dir / "train.log"
    tail: list[str] = []
    steps_done = done_before
    plan = setup.plan
    with open(log_path, "a") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, env=env, preexec_fn=partial(die_with_parent, signal.SIGTERM)) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                rec = parse_train_line(line)
                if rec is None:
                    continue
                step = rec["epoch"] * plan.steps_per_epoch + rec["epoch_samples"] // plan.batch_size
                if step > steps_done:
                    progress.update(step - steps_done, (step - steps_done) * plan.batch_size)
                    steps_done = step
        except BaseException:
            proc.kill()
            raise
        rc = proc.wait()
    if rc != 0:
        raise PoolsieveError(failure_line(tail, f"open_clip training (exit {rc})", log_path))


# ------------------------------------------------------------------------------------ the stage
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
        _run_local(setup, config, progress, done_before)
    seconds = time.monotonic() - start
    progress.close()
    return finish_run(out_dir, seconds=seconds, resumed_samples=done_before * plan.batch_size)


def finish_run(out_dir: str | Path, *, seconds: float | None = None, resumed_samples: int = 0) -> dict[str, Any]:
    """Write ``summary.json``, DataComp's ``info.pkl`` and the open_clip model files of a finished run.

    Everything comes from the run folder (``train_config.json``, open_clip's ``out.log``), so any
    launcher can call it: ``python -m poolsieve.train.trainer finish RUN_DIR`` ends a SLURM job.
    """
    out_dir = Path(out_dir).resolve()
    record = read_json(out_dir / CONFIG_FILE)
    recipe, plan = record["recipe"], TrainingPlan(**record["plan"])
    checkpoint = out_dir / "checkpoints" / LATEST
    if read_epoch(checkpoint) != plan.epochs:
        raise PoolsieveError(f"{checkpoint}: training ended before its last epoch ({plan.epochs}); "
                             f"see {out_dir / 'out.log'} and rerun to resume")
    log_path = out_dir / "out.log"
    records = [r for line in (log_path.read_text().splitlines() if log_path.exists() else [])
               if (r := parse_train_line(line))]
    losses = [{"samples_seen": r["epoch"] * plan.samples_per_epoch + r["epoch_samples"], "loss": r["loss"],
               **r["losses"]} for r in records]
    last_per_epoch = {r["epoch"]: r["epoch_samples"] for r in records}
    samples_seen = sum(last_per_epoch.get(e, plan.samples_per_epoch) for e in range(plan.epochs))
    dataset_size = record["dataset_size"]
    summary = {
        "name": record["name"],
        "data": record["data"],
        "data_weights": record.get("data_weights"),
        "shards": record["shards"],
        "dataset_size": dataset_size,
        "scale": recipe["name"],
        "model": recipe["model"],
        "checkpoint": os.path.relpath(checkpoint, out_dir),
        "samples_seen": samples_seen,
        "budget": recipe["samples_seen"],
        "epochs": plan.epochs,
        "steps": plan.epochs * plan.steps_per_epoch,
        "batch_size": plan.batch_size,
        "world_size": plan.world_size,
        "learning_rate": recipe["learning_rate"],
        "passes_over_data": round(samples_seen / dataset_size, 3),
        "final_loss": losses[-1]["loss"] if losses else None,
        "losses": losses,
        "seconds": None if seconds is None else round(seconds, 1),
        "samples_per_second": None if not seconds else round((samples_seen - resumed_samples) / seconds, 1),
        "seed": record["config"]["seed"],
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    scale_config = {"batch_size": recipe["batch_size"], "learning_rate": recipe["learning_rate"],
                    "train_num_samples": recipe["samples_seen"], "warmup": recipe["warmup"],
                    "model": info_model(recipe["model"], out_dir), "beta2": recipe["beta2"]}
    data = "::".join(str((out_dir / d).resolve()) for d in record["data"])
    write_open_clip_folder(out_dir, recipe["model"], checkpoint)  # plain open_clip: "local-dir:RUN_DIR"
    write_info(out_dir, recipe["name"], scale_config, data)
    return _resolved(summary, out_dir)


def _resolved(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The summary with its run-relative paths made absolute for this machine."""
    out = dict(summary)
    if out.get("checkpoint"):
        out["checkpoint"] = str(run_dir / out["checkpoint"])
    return out


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's summary, its checkpoint path resolved against the run folder (wherever it is now)."""
    run_dir = Path(run_dir)
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        raise InputError(path, "no finished training run here (run `poolsieve train` first)")
    return _resolved(json.loads(path.read_text()), run_dir.resolve())


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "finish":
        sys.exit("usage: python -m poolsieve.train.trainer finish RUN_DIR")
    try:
        print(json.dumps({k: v for k, v in finish_run(sys.argv[2]).items() if k != "losses"}, indent=2))
    except PoolsieveError as e:
        sys.exit(f"poolsieve train: error: {e}")
