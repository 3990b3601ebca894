"""Score the pool once: CLIP scores and embeddings for every downloaded pair, with one or more models.

For each whole shard ``shards/{shard}.tar`` this writes ``scores/{shard}.npz`` (L2-normalised fp16
``<key>_img`` / ``<key>_txt``) and then ``scores/{shard}.parquet`` (``clip_<key>_similarity_score`` per
model), so a shard whose parquet exists is whole. Rows are sorted by sample key, whatever order the
download wrote the tar in (``core/formats.py``), and chunks and batches are cut in that order, so a pool
downloaded twice scores to the same bytes; on a GPU the default batch size is probed by timing, so give
``--batch-size`` where embeddings must repeat bit for bit. CPU tasks read and decode shards
(``Runtime.stream_generators``: chunks handed over with backpressure) and encoder workers, one per GPU
or one on a CPU-only cluster (``Runtime.actor_pool``), encode them; the driver writes. ``--executor
local`` does the same in one process. A scored pool given a model its tables lack gets exactly that
model's columns and embeddings added; every model is checked before any work. Without pretrained
weights (offline, or a new domain), ``poolsieve train-scorer`` trains a scorer on your own seed data
and prints the ``--model`` to pass here.

Also: ``--reference DIR --name NAME`` embeds a labelled image set into ``references/NAME.npz``, and
``--import-datacomp DIR`` turns DataComp's released metadata parquets + npz embeddings into score tables.

This module holds the options and the order of the work; the rest of the package, one concern each:
``model_entries.py`` (the models as named), ``plan.py`` (what each shard needs, encoders and readers for
the cluster), ``prepare.py`` (CPU: a shard read into chunks of pixels, tokens and table columns),
``encode.py`` (the device: chunks encoded), ``write.py`` (a shard's npz and table), ``run.py`` (one job
at work: readers -> encoders -> writer), ``references.py`` and ``datacomp_import.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from poolsieve.core.devices import INFERENCE_PRECISIONS
from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.models import check_model_spec
from poolsieve.core.names import check_name
from poolsieve.core.progress import print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage, option
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.datacomp_import import import_datacomp
from poolsieve.pipeline.score.model_entries import parse_models
from poolsieve.pipeline.score.plan import plan_jobs
from poolsieve.pipeline.score.prepare import DECODE_MODES
from poolsieve.pipeline.score.references import embed_reference
from poolsieve.pipeline.score.run import RunStats, ScoreRun

DEFAULT_MODELS = ("ViT-B-32:openai",)


@dataclass
class ScoreConfig:
    """The ``score:`` section; each option is also a flag. Zeros mean "choose for me"."""

    models: list[Any] = option(
        list(DEFAULT_MODELS), "open_clip model, repeat for several; KEY names its columns "
        "(default b32/l14 for OpenAI B/32, L/14, else the architecture); in YAML also {arch, pretrained, key}; "
        "no pretrained weights (offline, a new domain)? `poolsieve train-scorer` makes a scorer from your seed data",
        flag="--model", short="-m", metavar="[KEY=]ARCH[:PRETRAINED|CHECKPOINT]")
    device: str = option("auto", "auto, cpu or cuda[:N]")
    precision: str = option("auto", "auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16", choices=INFERENCE_PRECISIONS)
    batch_size: int = option(0, "images per forward (default: 64 on CPU, probed on GPU)")
    chunk_size: int = option(0, "samples per decoded chunk handed to an encoder (default: the batch size)")
    decode: str = option("cpu", "decode JPEGs with PIL in CPU tasks, or with nvjpeg in the encoder on a GPU",
                         choices=DECODE_MODES)
    encoders: int = option(0, "encoder actors (default: one per GPU, else one)")
    decode_workers: int = option(0, "shards read and decoded at once (default: the CPUs the encoders leave free)")
    threads: int = option(0, "torch threads of a CPU encoder (default: the cores not already busy)")
    language: bool = option(True, "fastText language id of the captions (--no-language: skip it)")
    trust_checkpoint: bool = option(False, "load local checkpoints that need full unpickling (can run code in "
                                    "them; default: weights only)")
    shards: list[str] = option([], "score only this shard (repeat; default: every whole shard)", flag="--shard",
                               metavar="NAME")
    import_datacomp: str | None = option(None, "instead of scoring: make score tables from DataComp's released "
                                         "metadata parquets + npz embeddings in DIR", metavar="DIR")
    drop_duplicate_uids: bool = option(False, "with import_datacomp: drop rows whose uid repeats an earlier row "
                                       "(default: refuse the file)")
    reference: str | None = option(None, "instead of scoring: embed a labelled image set (class subfolders or "
                                   "webdataset tars) into references/NAME.npz", metavar="DIR")
    reference_name: str | None = option(None, "name of the reference set (with --reference)", flag="--name",
                                        metavar="NAME")


def run(ws: Workspace, config: ScoreConfig, runtime: Runtime, *, overwrite: bool = False) -> dict[str, Any]:
    """The stage: score the pool (``scores/``), or import DataComp's scores, or embed a reference set."""
    if config.reference is not None:
        if not config.reference_name:
            raise ConfigError("--reference needs --name NAME (the file is references/NAME.npz)")
        check_name(config.reference_name, "reference set name")
        with ws.lock(f"references/{config.reference_name}"):
            summary = embed_reference(ws, config.reference, config.reference_name, config, overwrite=overwrite)
        return {"mode": "reference", **summary}
    if config.import_datacomp is not None:
        with ws.lock("scores"):
            summary = import_datacomp(ws, config.import_datacomp, runtime, overwrite=overwrite,
                                      language=config.language, drop_duplicate_uids=config.drop_duplicate_uids)
        return {"mode": "import", **summary}
    with ws.lock("scores"):
        return score_pool(ws, config, runtime, overwrite=overwrite)


def score_pool(ws: Workspace, config: ScoreConfig, runtime: Runtime, *, overwrite: bool = False,
               quiet: bool = False) -> dict[str, Any]:
    """Score every whole shard of ``ws`` (or ``config.shards``) with every model it lacks; return a summary.

    Every model spec is checked before any work (``check_model_spec``): an unknown architecture or tag
    or a missing checkpoint fails at once, and so do weights that cannot be had, for the models some
    shard needs. A shard without a score table gets one with all the models; a scored shard that lacks
    some of them gets exactly those added (columns and embeddings), its other columns kept as they are.
    A shard that fails is named in one line after the others are scored (and the summary printed)."""
    if config.decode not in DECODE_MODES:
        raise ConfigError(f"score.decode must be one of {', '.join(DECODE_MODES)}, got {config.decode!r}")
    models = parse_models(config.models, config.trust_checkpoint)
    for m in models:
        check_model_spec(m.spec, weights=False)
    tars = ws.shard_tars()
    if config.shards:
        wanted = set(config.shards)
        tars = [t for t in tars if t.stem in wanted]
    if not tars:
        raise InputError(ws.shards_dir, "no whole shards to score (a shard is whole when its _stats.json exists)")
    jobs = plan_jobs(ws, tars, models, overwrite)
    needed = {m.key for job in jobs for m in job.models}
    for m in models:
        if m.key in needed:
            check_model_spec(m.spec, weights=True)
    for job in jobs:
        for t in job.tars:  # temporary files a killed run left behind
            for stale in ws.scores_dir.glob(f".{t.stem}.*.tmp"):
                stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    stats = RunStats(total_shards=len(tars), skipped=len(tars) - sum(len(j.tars) for j in jobs))
    for job in jobs:
        ScoreRun(ws, job, config, runtime, stats, quiet).execute()
    stats.seconds = time.perf_counter() - t0
    summary = stats.summary(ws, models)
    if stats.errors:
        if not quiet:
            report(summary)
        path, problem = stats.errors[0]
        more = f" ({len(stats.errors) - 1} more shard(s) failed too)" if len(stats.errors) > 1 else ""
        raise InputError(path, problem + more + "; the other shards are scored, rerun after fixing it")
    return summary


# ----------------------------------------------------------------------------------- summary
TITLES = {"score": "score", "reference": "score --reference", "import": "score --import-datacomp"}


def report(summary: dict[str, Any]) -> None:
    """The one-screen summary of a score, import or reference run."""
    print_summary(TITLES[summary.get("mode", "score")],
                  [(k, v) for k, v in summary.items() if k not in ("mode", "failed_shards")])


STAGE = Stage("score", ScoreConfig, run=run, report=report,
              reads=("shards/",), writes=("scores/", "references/"))


def cli_action(ctx: Any, args: Any) -> None:
    """``--import-datacomp`` may be a pool's first stage: it makes the workspace folder when it does not exist."""
    if ctx.workspace_path is not None and STAGE.config_from(ctx.section("score"), args).import_datacomp is not None:
        ctx.workspace(create=True)
