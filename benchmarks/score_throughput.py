"""Score-stage throughput against the bare model forward on the same batches, side by side in one run.

    python benchmarks/score_throughput.py                     # ViT-B-32, random weights, CPU, on Ray
    python benchmarks/score_throughput.py --images 512 --executor local
    python benchmarks/score_throughput.py --arch ViT-L-14 --device cuda --decode gpu   # on a GPU node

It writes a pool of JPEGs in img2dataset's layout into a temporary workspace, runs the whole score stage
(read tar, decode, preprocess, tokenise, encode image + caption, write parquet + npz), then times the
model's ``encode_image`` + ``encode_text`` alone on the very same preprocessed batches, and prints
end-to-end images/s, bare-forward images/s and their ratio. Target on a CPU machine: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

# With --executor local everything runs in this process, so its CPU time is the whole cost: a ratio of
# CPU-seconds per image does not depend on what else the machine runs (wall-clock rates on a shared one do).
CPU_SECONDS_PER_IMAGE: dict[str, list[float]] = {}


def write_pool(shards_dir: Path, images: int, per_shard: int, size: int, seed: int = 0, workers: int = 1) -> None:
    """JPEG pool in img2dataset's layout (tar + parquet + _stats.json per shard), shards written in parallel."""
    from concurrent.futures import ProcessPoolExecutor

    shards_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(shards_dir, shard, lo, min(lo + per_shard, images), size, seed)
            for shard, lo in enumerate(range(0, images, per_shard))]
    if workers <= 1:
        for job in jobs:
            _write_shard(*job)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_shard, *zip(*jobs, strict=True)))


def _write_shard(shards_dir: Path, shard: int, lo: int, hi: int, size: int, seed: int) -> None:
    import pandas as pd

    from poolsieve.core.shapes import COLOURS, SHAPES, draw_shape, encode_jpeg, english_caption

    rng = np.random.default_rng([seed, shard])
    name = f"{shard:05d}"
    rows = []
    with tarfile.open(shards_dir / f"{name}.tar", "w") as tar:
        for i in range(lo, hi):
            shape, colour = SHAPES[i % 3], list(COLOURS)[i % 6]
            w, h = size + int(rng.integers(0, size // 2)), size
            jpeg = encode_jpeg(draw_shape(shape, colour, w, h, rng))
            caption = english_caption(shape, colour, rng)
            key = f"{name}{i - lo:04d}"
            meta = {"uid": rng.bytes(16).hex(), "caption": caption, "key": key, "status": "success",
                    "width": w, "height": h, "original_width": w, "original_height": h,
                    "sha256": hashlib.sha256(jpeg).hexdigest()}
            members = (("jpg", jpeg), ("txt", caption.encode()), ("json", json.dumps(meta).encode()))
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            rows.append(meta)
    pd.DataFrame(rows).to_parquet(shards_dir / f"{name}.parquet", index=False)
    (shards_dir / f"{name}_stats.json").write_text(json.dumps({"count": len(rows), "successes": len(rows)}))


def steady_rate(ws) -> float:
    """images/s between the first and the last shard written (start-up costs excluded), from file times."""
    import pyarrow.parquet as pq

    tables = sorted(ws.scores_dir.glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(tables) < 2:
        return float("nan")
    rows = sum(pq.read_metadata(p).num_rows for p in tables[1:])
    return rows / max(tables[-1].stat().st_mtime - tables[0].stat().st_mtime, 1e-9)


def bare_forward_rate(ws, arch: str, pretrained: str | None, device: str, precision: str, batch_size: int,
                      repeats: int, threads: int = 0) -> float:
    """images/s of encode_image + encode_text alone, on the stage's own preprocessed batches."""
    import torch

    from poolsieve.pipeline.score.encode import Encoder
    from poolsieve.pipeline.score.model_entries import ModelEntry
    from poolsieve.pipeline.score.prepare import iter_prepared_chunks

    enc = Encoder([ModelEntry.parse({"arch": arch, "pretrained": pretrained})], device, precision, batch_size, threads)
    model, _ = enc.loaded[0]
    plan = enc.plan(batch_size, language=False)
    plan.decode = "cpu"
    batches = []
    for tar in ws.shard_tars():
        for chunk in iter_prepared_chunks(tar, plan):
            pixels = enc._pixels(chunk, 0, 0, int(chunk.ok.sum()), None).to(enc._dtype(model))
            batches.append((pixels, torch.from_numpy(chunk.tokens[arch]).to(enc.device)))
    n = sum(len(b[0]) for b in batches)
    rates = []
    with torch.inference_mode():
        model.encode_image(batches[0][0][:2])  # warm-up
        for _ in range(repeats):
            _sync(enc.device)
            t0, c0 = time.perf_counter(), time.process_time()
            for pixels, tokens in batches:
                model.encode_image(pixels)
                model.encode_text(tokens)
            _sync(enc.device)
            rates.append(n / (time.perf_counter() - t0))
            CPU_SECONDS_PER_IMAGE.setdefault("bare", []).append((time.process_time() - c0) / n)
    return statistics.median(rates)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def stage_rate(ws, args, runtime, repeats: int) -> tuple[float, dict]:
    from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

    config = ScoreConfig(models=[{"arch": args.arch, "pretrained": args.pretrained}], device=args.device,
                         precision=args.precision, batch_size=args.batch_size, decode=args.decode,
                         threads=args.threads)
    rates, steady, summary = [], [], {}
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        summary = score_pool(ws, config, runtime, overwrite=True, quiet=True)
        rates.append(summary["samples"] / (time.perf_counter() - t0))
        CPU_SECONDS_PER_IMAGE.setdefault("stage", []).append((time.process_time() - c0) / summary["samples"])
        steady.append(steady_rate(ws))
    summary["steady images/s"] = statistics.median(steady)
    return statistics.median(rates), summary


def main() -> None:
    from poolsieve.core.progress import format_table
    from poolsieve.core.runtime import Runtime
    from poolsieve.core.workspace import Workspace

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--pretrained", default=None, help="tag or checkpoint (default: random weights)")
    p.add_argument("--images", type=int, default=512, help="more amortise the start (worker spawn, model load) better")
    p.add_argument("--per-shard", type=int, default=64)
    p.add_argument("--size", type=int, default=256, help="image height in pixels (width varies up to 1.5x)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--decode", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--executor", default="ray", choices=("ray", "local"))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="CPU encoder threads, the same for both (0: free cores)")
    p.add_argument("--gen-workers", type=int, default=1, help="processes that write the test pool")
    args = p.parse_args()
    os.environ.setdefault("RAY_ADDRESS", "local")  # a Ray of our own, even when another one runs on this machine
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp, Runtime(executor=args.executor) as runtime:
        ws = Workspace.create(tmp)
        write_pool(ws.shards_dir, args.images, args.per_shard, args.size, workers=args.gen_workers)
        if args.executor == "ray":
            runtime.ensure_ray()  # a cluster is up before a stage runs; its start is not the stage's cost
        if not args.threads:
            from poolsieve.pipeline.score.encode import auto_threads

            args.threads = auto_threads()  # chosen once, so that the stage and the bare forward use the same
        device = "cuda" if args.device == "auto" and _has_cuda() else ("cpu" if args.device == "auto" else args.device)
        # The bare forward runs before and after the stage and is averaged, so that a machine whose load
        # drifts during the run (a shared one) biases neither side.
        before = bare_forward_rate(ws, args.arch, args.pretrained, device, args.precision, args.batch_size,
                                   args.repeats, args.threads)
        stage, summary = stage_rate(ws, args, runtime, args.repeats)
        after = bare_forward_rate(ws, args.arch, args.pretrained, device, args.precision, summary["batch size"],
                                  args.repeats, args.threads)
        forward = (before + after) / 2
    print(f"{args.arch} ({args.pretrained or 'random weights'}), {args.images} JPEGs ~{args.size}px, "
          f"device {summary['device']} ({args.threads} threads), batch {summary['batch size']}, decode {args.decode}, executor {args.executor}")
    print(format_table(["measure", "images/s"], [
        ["score stage, end to end (read+decode+preprocess+tokenise+encode+write)", round(stage, 2)],
        ["score stage, steady state (first shard to last shard)", round(summary["steady images/s"], 2)],
        ["bare model forward (encode_image + encode_text), same batches", round(forward, 2)],
        ["  (bare forward before / after the stage)", f"{before:.2f} / {after:.2f}"],
        ["ratio end-to-end stage / forward", round(stage / forward, 3)],
        ["ratio steady-state stage / forward", round(summary["steady images/s"] / forward, 3)],
    ]))
    if args.executor == "local" and args.device in ("auto", "cpu") and not _has_cuda():
        stage_cpu = statistics.median(CPU_SECONDS_PER_IMAGE["stage"])
        bare_cpu = statistics.median(CPU_SECONDS_PER_IMAGE["bare"])
        print(format_table(["CPU-seconds per image (load-independent)", "stage", "bare forward", "bare / stage"],
                           [["--executor local, all work in this process", round(stage_cpu, 4), round(bare_cpu, 4),
                             round(bare_cpu / stage_cpu, 3)]]))


if __name__ == "__main__":
    main()
