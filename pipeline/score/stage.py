"""Score the pool once: CLIP scores and embeddings for every downloaded pair, with one or more models.

For each whole shard ``shards/{shard}.tar`` this writes ``scores/{shard}.npz`` (L2-normalised fp16
``<key>_img`` / ``<key>_txt``) and then ``scores/{shard}.parquet`` (one row per sample in tar order,
``clip_<key>_similarity_score`` per model), so a shard whose parquet exists is whole. CPU tasks read
and decode shards (``Runtime.stream_generators``: chunks handed over with backpressure) and encoder
workers, one per GPU or one on a CPU-only cluster (``Runtime.actor_pool``), encode them; the driver
writes. ``--executor local`` does the same in one process. A scored pool given a model its tables lack
gets exactly that model's columns and embeddings added; every model is checked before any work.
Without pretrained weights (offline, or a new domain), ``poolsieve train-scorer`` trains a scorer on
your own seed data and prints the ``--model`` to pass here.

Also: ``--reference DIR --name NAME`` embeds a labelled image set into ``references/NAME.npz``, and
``--import-datacomp DIR`` turns DataComp's released metadata parquets + npz embeddings into score tables.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.devices import INFERENCE_PRECISIONS
from poolsieve.core.errors import ConfigError, InputError, PoolsieveWarning
from poolsieve.core.formats import (
    CAPTION_TRUNCATED,
    MAX_CAPTION_BYTES,
    MAX_IMAGE_BYTES,
    SCORE_TABLE_BASE_COLUMNS,
    STATUS_DECODE_ERROR,
    STATUS_TOO_LARGE,
    atomic_path,
    embedding_keys,
    score_column,
    score_table_schema,
    write_embeddings,
)
from poolsieve.core.progress import Progress, print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage, option
from poolsieve.core.stall import StallWatch
from poolsieve.core.untrusted_files import open_regular
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.encode import DECODE_MODES

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
        from poolsieve.pipeline.score.references import embed_reference

        if not config.reference_name:
            raise ConfigError("--reference needs --name NAME (the file is references/NAME.npz)")
        with ws.lock(f"references/{config.reference_name}"):
            summary = embed_reference(ws, config.reference, config.reference_name, config, overwrite=overwrite)
        return {"mode": "reference", **summary}
    if config.import_datacomp is not None:
        from poolsieve.pipeline.score.datacomp_import import import_datacomp

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
    from poolsieve.core.models import check_model_spec
    from poolsieve.pipeline.score.encode import parse_models

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
        _run(ws, job, config, runtime, stats, quiet)
    stats.seconds = time.perf_counter() - t0
    summary = stats.summary(ws, models)
    if stats.errors:
        if not quiet:
            report(summary)
        path, problem = stats.errors[0]
        more = f" ({len(stats.errors) - 1} more shard(s) failed too)" if len(stats.errors) > 1 else ""
        raise InputError(path, problem + more + "; the other shards are scored, rerun after fixing it")
    return summary


_SCORE_COLUMN = re.compile(r"^clip_(.+)_similarity_score$")


def scored_keys(ws: Workspace, shard: str) -> set[str] | None:
    """The model keys a shard's score table holds (score column and both embeddings), or None when it has
    no whole table (the npz is written before the parquet, so a parquet means a whole pair)."""
    import pyarrow.parquet as pq

    table, npz = ws.score_table_path(shard), ws.embeddings_path(shard)
    if not (table.exists() and npz.exists()):
        return None
    try:
        with open_regular(table) as f:
            names = pq.read_schema(f).names
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is named
        raise InputError(table, f"not a readable score table ({e}); remove it or rerun with --overwrite") from None
    try:
        with open_regular(npz) as f, np.load(f, allow_pickle=False) as z:
            arrays = set(z.files)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(npz, f"not a readable .npz file ({e}); remove it or rerun with --overwrite") from None
    keys = {m.group(1) for name in names if (m := _SCORE_COLUMN.match(name))}
    return {k for k in keys if set(embedding_keys(k)) <= arrays}


MODELS_METADATA = b"poolsieve.models"  # score table metadata: {model key: the model that made its columns}


def model_record(ws: Workspace, entry: Any) -> str:
    """How a score table records the model of a key: ``ARCH[:TAG|CHECKPOINT]``, a checkpoint inside the
    workspace relative to it (so a copied workspace records the same model)."""
    pretrained = entry.spec.pretrained
    if pretrained and entry.spec.is_local_checkpoint:
        pretrained = ws.rel(pretrained)
    return entry.spec.arch + (f":{pretrained}" if pretrained else "")


def recorded_models(ws: Workspace, shard: str) -> dict[str, str]:
    """The models a shard's score table records for its keys (none for tables written before records)."""
    import pyarrow.parquet as pq

    with open_regular(ws.score_table_path(shard)) as f:
        meta = pq.read_schema(f).metadata or {}
    try:
        records = json.loads(meta.get(MODELS_METADATA, b"{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in records.items()} if isinstance(records, dict) else {}


@dataclass
class ScoreJob:
    """Shards that need the same models: new tables (``adding`` False) or columns added to scored ones."""

    models: list[Any]
    tars: list[Path]
    adding: bool = False


def plan_jobs(ws: Workspace, tars: Sequence[Path], models: Sequence[Any], overwrite: bool) -> list[ScoreJob]:
    """What each shard needs: every model (no table yet, or ``overwrite``), the models its table lacks, or
    nothing; shards that need the same are one job. A key whose columns another model made is kept, with
    a warning."""
    jobs: dict[tuple[bool, tuple[str, ...]], ScoreJob] = {}
    others: dict[str, tuple[str, int]] = {}  # key -> (the model that made its columns, shards)
    for t in tars:
        present = None if overwrite else scored_keys(ws, t.stem)
        missing = [m for m in models if present is None or m.key not in present]
        kept = [m for m in models if m not in missing]
        if kept:
            records = recorded_models(ws, t.stem)
            for m in kept:
                made_by = records.get(m.key)
                if made_by is not None and made_by != model_record(ws, m):
                    others[m.key] = (made_by, others.get(m.key, ("", 0))[1] + 1)
        if not missing:
            continue
        adding = present is not None
        job = jobs.setdefault((adding, tuple(m.key for m in missing)), ScoreJob(missing, [], adding))
        job.tars.append(t)
    for key, (made_by, shards) in others.items():
        asked = next(model_record(ws, m) for m in models if m.key == key)
        warnings.warn(f"{score_column(key)} of {shards} shard(s) was made by {made_by}, not by {asked} named now: "
                      f"kept as it is (name the new model with a key of its own, KEY={asked}, or pass --overwrite "
                      "to score anew)", PoolsieveWarning, stacklevel=3)
    return list(jobs.values())


@dataclass
class RunStats:
    total_shards: int = 0
    skipped: int = 0
    scored: int = 0
    added: dict[str, int] = field(default_factory=dict)  # model key -> scored shards it was added to
    samples: int = 0
    decode_errors: int = 0
    too_large: int = 0
    captions_cut: int = 0
    encode_seconds: float = 0.0
    seconds: float = 0.0
    device: str = ""
    batch_size: int = 0
    threads: int = 0
    errors: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, written: dict[str, Any]) -> None:
        if written.get("added"):
            for key in written["added"]:
                self.added[key] = self.added.get(key, 0) + 1
        else:
            self.scored += 1
            self.decode_errors += written["decode_errors"]
            self.too_large += written["too_large"]
            self.captions_cut += written["captions_cut"]
        self.samples += written["rows"]
        self.encode_seconds += written["encode_seconds"]

    def summary(self, ws: Workspace, models: Sequence[Any]) -> dict[str, Any]:
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        return {
            "mode": "score",
            "shards": self.total_shards,
            "scored now": self.scored,
            "models added to scored shards": ", ".join(f"{k} ({n} shard(s))" for k, n in self.added.items()) or "-",
            "already scored (skipped)": self.skipped,
            "failed shards": len(self.errors),
            "samples": self.samples,
            "decode errors": self.decode_errors,
            f"images over {MAX_IMAGE_BYTES >> 20} MiB (too_large, not read)": self.too_large,
            f"captions cut to {MAX_CAPTION_BYTES >> 10} KiB": self.captions_cut,
            "models": ", ".join(f"{m.key}={m.spec.arch}:{m.spec.pretrained or 'random'}" for m in models),
            "device": self.device or "-",
            "encoder threads": self.threads if self.device == "cpu" else "-",
            "batch size": self.batch_size or "-",
            "elapsed s": round(self.seconds, 2),
            "images/s": round(rate, 1),
            "output": str(ws.scores_dir),
            "failed_shards": [str(p) for p, _ in self.errors],
        }


# ------------------------------------------------------------------------------- execution
@dataclass
class _ShardState:
    tar: Path
    chunks: dict[int, Any] = field(default_factory=dict)
    dispatched: int = 0
    decoded_all: bool = False
    failed: bool = False


@dataclass(frozen=True)
class Resources:
    """How a score run uses the cluster: encoder workers and reader tasks, and the CPUs each reserves."""

    encoders: int
    device: str
    encoder_cpus: float
    readers: int
    reader_cpus: float
    cpus: float
    use_gpu: bool


def plan_resources(config: ScoreConfig, resources: dict[str, float], where: str = "this machine") -> Resources:
    """Encoders (one per GPU, else one) and readers (the CPUs the encoders leave free) for a cluster with
    ``resources`` (Ray's ``{"CPU": n, "GPU": m}``).

    Every CPU count runs: when the encoders would leave no whole CPU to a reader (``--num-cpus 1``, or
    as many GPUs as CPUs), encoders and readers share the CPUs in fractions (rounded down, so that they
    all fit) instead of waiting for each other forever."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1)) or 1.0
    use_gpu = config.device.startswith("cuda") or (config.device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise ConfigError(f"score: device cuda asked for, but {where} has no GPU")
    n_enc = config.encoders or (gpus if use_gpu else 1)
    device = ("cuda" if use_gpu else "cpu") if config.device == "auto" else config.device
    enc_cpus = 1.0 if not use_gpu else float(min(2, max(1, int(cpus) // max(1, n_enc) // 4)))
    free = cpus - n_enc * enc_cpus
    readers = config.decode_workers or max(1, int(free))
    reader_cpus = 1.0
    if free < 1:
        enc_cpus = math.floor(cpus / 2 / n_enc * 1e4) / 1e4  # Ray counts CPUs in units of 1/10,000
        reader_cpus = math.floor(cpus / 2 / readers * 1e4) / 1e4
    return Resources(n_enc, device, enc_cpus, readers, reader_cpus, cpus, use_gpu)


def _run(ws: Workspace, job: ScoreJob, config: ScoreConfig, runtime: Runtime, stats: RunStats, quiet: bool) -> None:
    """Readers (``read_chunks``, one streaming task per shard) hand decoded chunks to encoder workers
    (``EncoderActor``, one per GPU or one on CPUs); a writer thread assembles each shard once all its
    chunks are encoded, so writes never stall the encoders. ``--executor local``: the same, one chunk at a
    time in this process. A stall watch says what the run waits for when nothing finishes for a while."""
    from poolsieve.core.runtime import END
    from poolsieve.pipeline.score.encode import EncoderActor, ShardFailure, read_chunks

    res = plan_resources(config, runtime.resources(),
                         "the Ray cluster" if runtime.executor == "ray" else "this machine")
    tars, models = job.tars, job.models
    states = {t: _ShardState(t) for t in tars}
    count = {"setup": False, "reading": 0, "at_encoders": 0, "writing": 0}

    def waiting_for() -> str:
        parts = []
        if not count["setup"]:
            parts.append(f"{res.encoders} encoder worker(s) to start and load {', '.join(m.key for m in models)} "
                         f"({res.encoder_cpus:g} CPU{', 1 GPU' if res.use_gpu else ''} each)")
        else:
            parts.append(f"{count['reading']} reader task(s) pending or running ({res.reader_cpus:g} CPU each)")
            parts.append(f"{count['at_encoders']} chunk(s) at the encoder(s)")
            parts.append(f"{count['writing']} shard(s) being written")
        if runtime.executor == "ray":
            import ray

            free = ray.available_resources()
            parts.append(f"Ray: {free.get('CPU', 0):g} of {res.cpus:g} CPU free"
                         + (f", {free.get('GPU', 0):g} GPU free" if res.use_gpu else ""))
        return "; ".join(parts)

    watch = StallWatch("score", waiting_for)
    with watch, runtime.actor_pool(EncoderActor, res.encoders, models, res.device, config.precision,
                                   config.batch_size, config.threads, config.decode, config.chunk_size,
                                   config.language and not job.adding, num_cpus=res.encoder_cpus,
                                   num_gpus=1 if res.use_gpu else 0) as pool:
        info = pool.call_all("setup")[0]
        count["setup"] = True
        watch.tick()
        stats.device, stats.batch_size, stats.threads = info["device"], info["batch_size"], info["threads"]
        dims = info["dims"]
        what = "add " + ", ".join(dims) if job.adding else "score"
        progress = Progress(what, total=len(tars), unit="shards", quiet=quiet)
        writer = ThreadPoolExecutor(1, thread_name_prefix="score-writer")
        writes: deque[Any] = deque()
        write = add_to_shard if job.adding else write_shard
        records = {m.key: model_record(ws, m) for m in models}

        def collect(future: Any) -> None:
            written = future.result()
            count["writing"] -= 1
            watch.tick()
            stats.add(written)
            progress.update(1, written["rows"], "images")

        def finish_if_done(state: _ShardState) -> None:
            if state.failed or not state.decoded_all or len(state.chunks) < state.dispatched:
                return
            chunks = [state.chunks[i] for i in sorted(state.chunks)]
            state.chunks.clear()
            count["writing"] += 1
            writes.append(writer.submit(write, ws, state.tar.stem, chunks, dims, records))
            while writes and writes[0].done():
                collect(writes.popleft())

        def units() -> Any:
            for t in tars:
                count["reading"] += 1
                yield t

        def chunks() -> Any:
            """(shard, chunk index), chunk: as the readers hand them over; a shard is marked read at its end."""
            read = functools.partial(read_chunks, plan=info["plan"])
            for tar, item in runtime.stream_generators(read, units(), max_in_flight=res.readers,
                                                       num_cpus=res.reader_cpus):
                watch.tick()
                state = states[tar]
                if item is END:
                    count["reading"] -= 1
                    state.decoded_all = True
                    finish_if_done(state)
                elif not state.failed:
                    state.dispatched += 1
                    count["at_encoders"] += 1
                    yield (state, state.dispatched - 1), item

        try:
            for (state, index), encoded in pool.stream("encode", chunks(), per_worker=3):
                count["at_encoders"] -= 1
                watch.tick()
                if state.failed:
                    continue
                if isinstance(encoded, ShardFailure):
                    state.failed = True
                    state.chunks.clear()
                    stats.errors.append((state.tar, encoded.problem))
                    progress.update(1)
                    continue
                state.chunks[index] = encoded
                finish_if_done(state)
            while writes:
                collect(writes.popleft())
        finally:
            writer.shutdown(wait=True)
            progress.close()


# ---------------------------------------------------------------------------------- writing
@dataclass
class _Assembled:
    """A shard's encoded chunks put together: table columns, and per model key its embeddings and scores."""

    columns: dict[str, list[Any]]
    rows: int
    arrays: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    encode_seconds: float


def _assemble(chunks: Sequence[Any], dims: dict[str, int]) -> _Assembled:
    columns: dict[str, list[Any]] = {}
    for c in chunks:
        for name, values in c.columns.items():
            columns.setdefault(name, []).extend(values)
    n = len(columns.get("uid", []))
    ok = np.concatenate([c.ok for c in chunks]) if chunks else np.zeros(0, bool)
    ok_rows = np.flatnonzero(ok)
    arrays: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for key, dim in dims.items():
        img_key, txt_key = embedding_keys(key)
        img = np.zeros((n, dim), np.float16)
        txt = np.zeros((n, dim), np.float16)
        sc = np.full(n, np.nan, np.float32)
        if chunks:
            img[ok_rows] = np.concatenate([c.image[key] for c in chunks])
            txt[ok_rows] = np.concatenate([c.text[key] for c in chunks])
            sc[ok_rows] = np.concatenate([c.scores[key] for c in chunks])
        arrays[img_key], arrays[txt_key], scores[key] = img, txt, sc
    return _Assembled(columns, n, arrays, scores, float(sum(getattr(c, "seconds", 0.0) for c in chunks)))


def write_shard(ws: Workspace, shard: str, chunks: Sequence[Any], dims: dict[str, int],
                records: dict[str, str] | None = None) -> dict[str, Any]:
    """Assemble a shard's encoded chunks into ``scores/{shard}.npz`` then ``scores/{shard}.parquet``, whose
    metadata records the model of each key (``records``)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    got = _assemble(chunks, dims)
    df = pd.DataFrame({name: got.columns.get(name, []) for name in SCORE_TABLE_BASE_COLUMNS})
    for name in ("original_width", "original_height", "width", "height"):
        df[name] = pd.array(df[name], dtype="Int32")
    for name in ("caption_length", "caption_words"):
        df[name] = df[name].astype("int64")
    df["language_score"] = df["language_score"].astype("float32")
    for name in ("uid", "key", "text", "sha256", "language", "status", "error"):
        df[name] = df[name].astype(object)
    for key, sc in got.scores.items():
        df[score_column(key)] = sc
    write_embeddings(ws.embeddings_path(shard), got.arrays)
    with atomic_path(ws.score_table_path(shard)) as tmp:
        table = pa.Table.from_pandas(df, schema=score_table_schema(dims), preserve_index=False)
        pq.write_table(_with_records(table, records or {}), tmp)
    return {"rows": got.rows, "decode_errors": int((df["status"] == STATUS_DECODE_ERROR).sum()),
            "too_large": int((df["status"] == STATUS_TOO_LARGE).sum()),
            "captions_cut": int(df["error"].str.contains(CAPTION_TRUNCATED, regex=False, na=False).sum()),
            "encode_seconds": got.encode_seconds}


def add_to_shard(ws: Workspace, shard: str, chunks: Sequence[Any], dims: dict[str, int],
                 records: dict[str, str] | None = None) -> dict[str, Any]:
    """Add the models in ``dims`` to a scored shard: their embeddings to ``scores/{shard}.npz`` (the others
    kept as stored), then their score columns after the table's own (its columns kept as stored). Each
    file is written to a temporary name and renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    got = _assemble(chunks, dims)
    table_path, npz_path = ws.score_table_path(shard), ws.embeddings_path(shard)
    with open_regular(table_path) as f:
        table = pq.read_table(f)
    uids = table.column("uid").to_pylist()
    if uids != got.columns.get("uid", []):
        raise InputError(table_path, f"its {len(uids)} rows are not the {got.rows} samples of "
                                     f"shards/{shard}.tar in order; rerun with --overwrite to score it anew")
    with open_regular(npz_path) as f, np.load(f, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(got.arrays)
    for key, sc in got.scores.items():
        name = score_column(key)
        if name in table.column_names:  # a column without its embeddings: replaced with the new one
            table = table.drop_columns([name])
        table = table.append_column(pa.field(name, pa.float32()), pa.array(sc, pa.float32()))
    write_embeddings(npz_path, arrays)
    with atomic_path(table_path) as tmp:
        pq.write_table(_with_records(table, records or {}), tmp)
    return {"rows": got.rows, "decode_errors": 0, "encode_seconds": got.encode_seconds, "added": list(dims)}


def _with_records(table: Any, records: dict[str, str]) -> Any:
    """``table`` with ``records`` merged into the models its metadata records."""
    meta = dict(table.schema.metadata or {})
    try:
        before = json.loads(meta.get(MODELS_METADATA, b"{}"))
    except ValueError:
        before = {}
    merged = {**(before if isinstance(before, dict) else {}), **records}
    return table.replace_schema_metadata({**meta, MODELS_METADATA: json.dumps(merged, sort_keys=True).encode()})


# ----------------------------------------------------------------------------------- summary
TITLES = {"score": "score", "reference": "score --reference", "import": "score --import-datacomp"}


def report(summary: dict[str, Any]) -> None:
    """The one-screen summary of a score, import or reference run."""
    print_summary(TITLES[summary.get("mode", "score")],
                  [(k, v) for k, v in summary.items() if k not in ("mode", "failed_shards")])


STAGE = Stage("score", "CLIP scores and embeddings for every downloaded pair", ScoreConfig, run=run, report=report,
              reads=("shards/",), writes=("scores/", "references/"))


def cli_action(ctx: Any, args: Any) -> None:
    """``--import-datacomp`` may be a pool's first stage: it makes the workspace folder when it does not exist."""
    if ctx.workspace_path is not None and STAGE.config_from(ctx.section("score"), args).import_datacomp is not None:
        ctx.workspace(create=True)
