"""A run folder: checked and planned before training, finished after it.

``prepare_run`` checks the input, plans the budget and writes ``train_config.json`` (the record a rerun
must match to continue the run; its paths relative to the run folder, so a workspace copied elsewhere
holds the same record). ``finish_run`` writes ``summary.json``, DataComp's ``info.pkl`` and the open_clip
model files from the folder alone, so any launcher can end a run; ``load_summary`` reads a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError, InputError, PoolsieveError, PoolsieveWarning
from poolsieve.core.formats import atomic_path, read_json, write_json
from poolsieve.core.owned_folders import remove_owned

from .budget import TrainingPlan, fewer_workers_note, loader_workers, plan_budget
from .checkpoints import LATEST, info_model, read_epoch, write_info, write_open_clip_folder
from .config import TrainConfig, open_clip_args, resolve_precision
from .runner_io import parse_train_line
from .scales import Scale
from .shards import ARG_LIMIT, DATA_FILE_FLAG, count_samples, data_sources, train_data_string

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "train_config.json"
DATA_FILE = "train_data.txt"
RUN_RECORDS = (CONFIG_FILE, SUMMARY_FILE, DATA_FILE)  # a folder holding one of them is a run poolsieve wrote


@dataclass
class RunSetup:
    """Everything a launcher needs: the run folder, open_clip's flags, the plan."""

    out_dir: Path
    argv: list[str]
    recipe: Scale
    plan: TrainingPlan
    workers: int
    record: dict[str, Any]


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
