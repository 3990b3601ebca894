"""Score the pool once: CLIP scores and embeddings for every downloaded pair, with one or more models.

For each whole shard ``shards/{shard}.tar`` this writes ``scores/{shard}.npz`` (L2-normalised fp16
``<key>_img`` / ``<key>_txt``) and then ``scores/{shard}.parquet`` (one row per sample in tar order,
``clip_<key>_similarity_score`` per model), so a shard whose parquet exists is whole. On Ray, CPU
tasks read and decode shards (streaming chunks with backpressure) and encoder actors, one per GPU
(or one on a CPU-only cluster), encode them; the driver writes. ``--executor local`` does the same in
one process.

Also: ``--reference DIR --name NAME`` embeds a labelled image set into ``references/NAME.npz``, and
``--import-datacomp DIR`` turns DataComp's released metadata parquets + npz embeddings into score tables.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import ConfigError, InputError, PoolsieveError
from poolsieve.core.formats import (
    SCORE_TABLE_BASE_COLUMNS,
    atomic_path,
    embedding_keys,
    score_column,
    score_table_schema,
    write_embeddings,
)
from poolsieve.core.progress import Progress, print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace

DEFAULT_MODELS = ("ViT-B-32:openai",)


@dataclass
class ScoreConfig:
    """The ``score:`` config section. Zeros mean "choose for me"."""

    models: list[Any] = field(default_factory=lambda: list(DEFAULT_MODELS))  # "ARCH[:TAG|PATH]" or {arch, pretrained, key}
    device: str = "auto"          # auto | cpu | cuda
    precision: str = "auto"       # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    batch_size: int = 0           # per forward; 0: 64 on CPU, probed on GPU
    chunk_size: int = 0           # samples per decoded chunk handed to an encoder; 0: the batch size
    decode: str = "cpu"           # cpu (PIL in CPU tasks) | gpu (nvjpeg in the encoder, when on a GPU)
    encoders: int = 0             # encoder actors; 0: one per GPU, else one
    decode_workers: int = 0       # shards read at once; 0: the CPUs the encoders leave free
    threads: int = 0              # torch threads of a CPU encoder; 0: the cores not already busy
    language: bool = True         # fastText language id of captions
    trust_checkpoint: bool = False  # load local checkpoints that need full unpickling (runs code in them)


def score_pool(ws: Workspace, config: ScoreConfig, runtime: Runtime, overwrite: bool = False,
               shards: Sequence[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Score every whole shard of ``ws`` that has no complete score table yet; return a summary."""
    from poolsieve.pipeline.score.encode import DECODE_MODES, parse_models

    if config.decode not in DECODE_MODES:
        raise ConfigError(f"score.decode must be one of {', '.join(DECODE_MODES)}, got {config.decode!r}")
    models = parse_models(config.models, config.trust_checkpoint)
    tars = ws.shard_tars()
    if shards is not None:
        wanted = set(shards)
        tars = [t for t in tars if t.stem in wanted]
    if not tars:
        raise InputError(ws.shards_dir, "no whole shards to score (a shard is whole when its _stats.json exists)")
    todo = [t for t in tars if overwrite or not shard_is_scored(ws, t.stem)]
    for t in todo:  # temporary files a killed run left behind
        for stale in ws.scores_dir.glob(f".{t.stem}.*.tmp"):
            stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    stats = RunStats(total_shards=len(tars), skipped=len(tars) - len(todo))
    if todo:
        if runtime.executor == "local":
            _run_local(ws, todo, models, config, stats, quiet)
        else:
            _run_ray(ws, todo, models, config, runtime, stats, quiet)
    stats.seconds = time.perf_counter() - t0
    summary = stats.summary(ws, models)
    if not quiet:
        print_summary("score", [(k, v) for k, v in summary.items() if k != "failed_shards"])
    if stats.errors:
        path, problem = stats.errors[0]
        more = f" ({len(stats.errors) - 1} more shard(s) failed too)" if len(stats.errors) > 1 else ""
        raise InputError(path, problem + more + "; the other shards are scored, rerun after fixing it")
    return summary


def shard_is_scored(ws: Workspace, shard: str) -> bool:
    return ws.score_table_path(shard).exists() and ws.embeddings_path(shard).exists()


@dataclass
class RunStats:
    total_shards: int = 0
    skipped: int = 0
    scored: int = 0
    samples: int = 0
    decode_errors: int = 0
    encode_seconds: float = 0.0
    seconds: float = 0.0
    device: str = ""
    batch_size: int = 0
    threads: int = 0
    errors: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, written: dict[str, Any]) -> None:
        self.scored += 1
        self.samples += written["rows"]
        self.decode_errors += written["decode_errors"]
        self.encode_seconds += written["encode_seconds"]

    def summary(self, ws: Workspace, models: Sequence[Any]) -> dict[str, Any]:
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        return {
            "shards": self.total_shards,
            "scored now": self.scored,
            "already scored (skipped)": self.skipped,
            "failed shards": len(self.errors),
            "samples": self.samples,
            "decode errors": self.decode_errors,
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
def _run_local(ws: Workspace, tars: list[Path], models: list[Any], config: ScoreConfig, stats: RunStats,
               quiet: bool) -> None:
    from poolsieve.pipeline.score.encode import Encoder, iter_prepared_chunks

    encoder = Encoder(models, config.device, config.precision, config.batch_size, config.threads, config.decode)
    info = encoder.describe(config.chunk_size, config.language)
    stats.device, stats.batch_size, stats.threads = info["device"], info["batch_size"], info["threads"]
    progress = Progress("score", total=len(tars), unit="shards", quiet=quiet)
    for tar in tars:
        try:
            chunks = [encoder.encode(c) for c in iter_prepared_chunks(tar, info["plan"])]
        except InputError as e:
            stats.errors.append((tar, e.problem))
            progress.update(1)
            continue
        written = write_shard(ws, tar.stem, chunks, info["dims"])
        stats.add(written)
        progress.update(1, written["rows"], "images")
    progress.close()


@dataclass
class _ShardState:
    tar: Path
    generator: Any = None
    chunks: dict[int, Any] = field(default_factory=dict)
    dispatched: int = 0
    decoded_all: bool = False
    failed: bool = False


def _run_ray(ws: Workspace, tars: list[Path], models: list[Any], config: ScoreConfig, runtime: Runtime,
             stats: RunStats, quiet: bool) -> None:
    from poolsieve.core.runtime import get_result
    from poolsieve.pipeline.score.encode import EncoderActor, iter_prepared_chunks

    ray = runtime.ensure_ray()
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    use_gpu = config.device.startswith("cuda") or (config.device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise ConfigError("score: device cuda asked for, but the Ray cluster has no GPU")
    n_enc = config.encoders or (gpus if use_gpu else 1)
    device = ("cuda" if use_gpu else "cpu") if config.device == "auto" else config.device
    enc_cpus = 1 if not use_gpu else min(2, max(1, cpus // max(1, n_enc) // 4))
    actor_cls = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=enc_cpus, max_restarts=0)(EncoderActor)
    actors = [actor_cls.remote() for _ in range(n_enc)]
    try:
        infos = [a.setup.remote(models, device, config.precision, config.batch_size, config.threads, config.decode,
                                config.chunk_size, config.language) for a in actors]
        info = [get_result(ray, ref) for ref in infos][0]
    except BaseException:
        for a in actors:
            ray.kill(a)
        raise
    stats.device, stats.batch_size, stats.threads = info["device"], info["batch_size"], info["threads"]
    plan, dims = info["plan"], info["dims"]
    decoders = config.decode_workers or max(1, cpus - n_enc * enc_cpus)
    reader = ray.remote(num_cpus=1, num_returns="streaming", max_retries=0,
                        _generator_backpressure_num_objects=2)(iter_prepared_chunks)
    progress = Progress("score", total=len(tars), unit="shards", quiet=quiet)
    todo = deque(tars)
    active: dict[Any, _ShardState] = {}          # generator -> shard
    ready_chunks: deque[tuple[_ShardState, int, Any]] = deque()
    in_flight: dict[Any, tuple[_ShardState, int, int]] = {}  # encode ref -> (shard, chunk, actor)
    load = [0] * n_enc
    per_actor = 3
    writer = ThreadPoolExecutor(1, thread_name_prefix="score-writer")  # writes never stall the encoders
    writes: deque[Any] = deque()
    buffer_limit = 2 * n_enc
    states: list[_ShardState] = []

    def finish_if_done(state: _ShardState) -> None:
        if state.failed or not state.decoded_all or len(state.chunks) < state.dispatched:
            return
        chunks = [state.chunks[i] for i in sorted(state.chunks)]
        state.chunks.clear()
        writes.append(writer.submit(write_shard, ws, state.tar.stem, chunks, dims))
        while writes and writes[0].done():
            collect(writes.popleft())

    def collect(future: Any) -> None:
        written = future.result()
        stats.add(written)
        progress.update(1, written["rows"], "images")

    def fail(state: _ShardState, error: BaseException) -> None:
        if state.failed:
            return
        if not isinstance(error, InputError):
            raise error
        state.failed = True
        state.chunks.clear()
        stats.errors.append((state.tar, error.problem))
        progress.update(1)

    try:
        while todo or active or ready_chunks or in_flight:
            while todo and len(active) < decoders:
                state = _ShardState(todo.popleft())
                state.generator = reader.remote(state.tar, plan)
                active[state.generator] = state
                states.append(state)
            while ready_chunks and min(load) < per_actor:
                state, index, ref = ready_chunks.popleft()
                if state.failed:
                    continue
                a = load.index(min(load))
                load[a] += 1
                in_flight[actors[a].encode.remote(ref)] = (state, index, a)
            waitable = list(in_flight) + (list(active) if len(ready_chunks) < buffer_limit else [])
            if not waitable:
                continue
            done, _ = ray.wait(waitable, num_returns=1)
            for ref in done:
                if ref in in_flight:
                    state, index, a = in_flight.pop(ref)
                    load[a] -= 1
                    try:
                        state.chunks[index] = get_result(ray, ref)
                    except PoolsieveError as e:
                        fail(state, e)
                        continue
                    finish_if_done(state)
                else:
                    state = active[ref]
                    try:
                        chunk_ref = next(ref)
                    except StopIteration:
                        del active[ref]
                        state.decoded_all = True
                        finish_if_done(state)
                        continue
                    ready_chunks.append((state, state.dispatched, chunk_ref))
                    state.dispatched += 1
        while writes:
            collect(writes.popleft())
    finally:
        writer.shutdown(wait=True)
        for ref in in_flight:
            ray.cancel(ref, force=False)
        for gen in active:
            ray.cancel(gen, force=False)
        for a in actors:
            ray.kill(a)
        progress.close()


# ---------------------------------------------------------------------------------- writing
def write_shard(ws: Workspace, shard: str, chunks: Sequence[Any], dims: dict[str, int]) -> dict[str, Any]:
    """Assemble a shard's encoded chunks into ``scores/{shard}.npz`` then ``scores/{shard}.parquet``."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    df = pd.DataFrame({name: columns.get(name, []) for name in SCORE_TABLE_BASE_COLUMNS})
    for name in ("original_width", "original_height", "width", "height"):
        df[name] = pd.array(df[name], dtype="Int32")
    for name in ("caption_length", "caption_words"):
        df[name] = df[name].astype("int64")
    df["language_score"] = df["language_score"].astype("float32")
    for name in ("uid", "key", "text", "sha256", "language", "status", "error"):
        df[name] = df[name].astype(object)
    for key, sc in scores.items():
        df[score_column(key)] = sc
    write_embeddings(ws.embeddings_path(shard), arrays)
    with atomic_path(ws.score_table_path(shard)) as tmp:
        pq.write_table(pa.Table.from_pandas(df, schema=score_table_schema(dims), preserve_index=False), tmp)
    return {"rows": n, "decode_errors": int((df["status"] != "success").sum()),
            "encode_seconds": float(sum(getattr(c, "seconds", 0.0) for c in chunks))}


# ------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", dest="models", metavar="[KEY=]ARCH[:PRETRAINED|CHECKPOINT]",
                   help="open_clip model, repeat for several (default ViT-B-32:openai, DataComp's b32); KEY names "
                   "its columns (default b32/l14 for OpenAI B/32, L/14, else the architecture)")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--precision", help="auto (default: bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--batch-size", type=int, help="images per forward (default: 64 on CPU, probed on GPU)")
    p.add_argument("--chunk-size", type=int, help="samples per decoded chunk (default: the batch size)")
    p.add_argument("--decode", choices=("cpu", "gpu"), help="decode JPEGs with PIL on CPU tasks or nvjpeg on the GPU")
    p.add_argument("--encoders", type=int, help="encoder actors (default: one per GPU, else one)")
    p.add_argument("--decode-workers", type=int, help="shards decoded at once (default: free CPUs)")
    p.add_argument("--threads", type=int, help="torch threads of a CPU encoder (default: the cores not busy)")
    p.add_argument("--no-language", action="store_true", help="skip caption language detection")
    p.add_argument("--trust-checkpoint", action="store_true", default=None,
                   help="load local checkpoints that need full unpickling (can run code in them; default: "
                   "weights only)")
    p.add_argument("--shard", action="append", dest="shards", metavar="NAME", help="score only this shard (repeat)")
    g = p.add_argument_group("other inputs")
    g.add_argument("--reference", type=Path, metavar="DIR",
                   help="embed a labelled image set (class subfolders or webdataset tars) into references/NAME.npz")
    g.add_argument("--name", help="name of the reference set (with --reference)")
    g.add_argument("--import-datacomp", type=Path, metavar="DIR",
                   help="make score tables from DataComp's released metadata parquets + npz embeddings")
    g.add_argument("--drop-duplicate-uids", action="store_true",
                   help="with --import-datacomp: drop rows whose uid repeats an earlier row (default: refuse)")


def config_from_args(ctx: Any, args: argparse.Namespace) -> ScoreConfig:
    from poolsieve.core.config import build

    return build(ScoreConfig, ctx.section("score"), "score", {
        "models": args.models, "device": args.device, "precision": args.precision, "batch_size": args.batch_size,
        "chunk_size": args.chunk_size, "decode": args.decode, "encoders": args.encoders,
        "decode_workers": args.decode_workers, "threads": args.threads,
        "language": False if args.no_language else None, "trust_checkpoint": args.trust_checkpoint})


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    ws = ctx.workspace()
    config = config_from_args(ctx, args)
    if args.reference is not None:
        from poolsieve.pipeline.score.references import embed_reference

        if not args.name:
            raise ConfigError("--reference needs --name NAME (the file is references/NAME.npz)")
        with ws.lock(f"references/{args.name}"):
            embed_reference(ws, args.reference, args.name, config, overwrite=ctx.overwrite)
        return 0
    if args.import_datacomp is not None:
        from poolsieve.pipeline.score.datacomp_import import import_datacomp

        with ws.lock("scores"):
            import_datacomp(ws, args.import_datacomp, ctx.runtime, overwrite=ctx.overwrite, language=config.language,
                            drop_duplicate_uids=args.drop_duplicate_uids)
        return 0
    with ws.lock("scores"):
        score_pool(ws, config, ctx.runtime, overwrite=ctx.overwrite, shards=args.shards)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m poolsieve.pipeline.score.stage``: this stage alone, with the same flags as ``poolsieve score``."""
    import sys

    from poolsieve.pipeline.cli import add_common_options, make_context

    parser = argparse.ArgumentParser(prog="poolsieve-score", description=(__doc__ or "").split("\n\n")[0])
    add_arguments(parser)
    add_common_options(parser)
    args = parser.parse_args(argv)
    try:
        ctx = make_context(args)
        with ctx.runtime:
            return run_cli(ctx, args)
    except PoolsieveError as e:
        print(f"poolsieve score: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("poolsieve score: interrupted; completed shards are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
