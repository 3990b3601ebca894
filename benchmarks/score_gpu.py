"""Score-stage throughput on one GPU: ViT-B-32 and ViT-L-14 (random weights, bf16), PIL vs nvjpeg decoding.

    python benchmarks/score_gpu.py                 # ~3-4 minutes on one H100/H200 with 16 CPU cores
    python benchmarks/score_gpu.py --images 20000  # shorter

Writes a pool of web-sized JPEGs (img2dataset layout) into a temporary workspace, runs the whole score stage
on a local Ray (CPU decode tasks feeding one GPU encoder actor) for each model and decode mode, and
prints one table: end-to-end and steady-state images/s of the stage, the bare bf16 image forward on the
same device at the same batch size, their ratio, and the target (ViT-L-14 >= 1,700/s, ViT-B-32 >=
10,000/s end to end).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_throughput import steady_rate, write_pool  # noqa: E402

TARGETS = {"ViT-B-32": 10_000, "ViT-L-14": 1_700}


def bare_image_forward(arch: str, batch_size: int, steps: int = 20) -> float:
    """images/s of ``encode_image`` alone in bf16 on random pixels (the figure NOTES.md quotes)."""
    import torch

    from poolsieve.core.models import ModelSpec, load_model

    model, _, _ = load_model(ModelSpec(arch), "cuda", "bf16")
    side = model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size
    x = torch.randn(batch_size, 3, side, side, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        for _ in range(3):
            model.encode_image(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            model.encode_image(x)
        torch.cuda.synchronize()
    rate = steps * batch_size / (time.perf_counter() - t0)
    del model
    torch.cuda.empty_cache()
    return rate


def main() -> None:
    import torch

    from poolsieve.core.progress import format_table
    from poolsieve.core.runtime import Runtime
    from poolsieve.core.workspace import Workspace
    from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=60_000)
    p.add_argument("--per-shard", type=int, default=2_000)
    p.add_argument("--size", type=int, default=320, help="image height (width varies up to 1.5x)")
    p.add_argument("--archs", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    p.add_argument("--decodes", nargs="+", default=["cpu", "gpu"])
    args = p.parse_args()
    os.environ.setdefault("RAY_ADDRESS", "local")  # a Ray of our own, even when another one runs on this machine
    if not torch.cuda.is_available():
        raise SystemExit("score_gpu.py needs a CUDA GPU; on a CPU machine run benchmarks/score_throughput.py")
    rows = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="score-gpu-") as tmp, Runtime(executor="ray") as runtime:
        ws = Workspace.create(tmp)
        t0 = time.perf_counter()
        write_pool(ws.shards_dir, args.images, args.per_shard, args.size, workers=os.cpu_count() or 1)
        print(f"wrote {args.images} JPEGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        runtime.ensure_ray()
        for arch in args.archs:
            for decode in args.decodes:
                config = ScoreConfig(models=[{"arch": arch, "pretrained": None}], device="cuda", decode=decode,
                                     language=True)
                t0 = time.perf_counter()
                summary = score_pool(ws, config, runtime, overwrite=True, quiet=True)
                e2e = summary["samples"] / (time.perf_counter() - t0)
                steady = steady_rate(ws)
                bare = bare_image_forward(arch, int(summary["batch size"]))
                target = TARGETS.get(arch, 0)
                rows.append([arch, decode, int(summary["batch size"]), round(e2e), round(steady), round(bare),
                             round(steady / bare, 3), target, "yes" if e2e >= target else "no"])
                print(f"{arch} decode={decode}: {e2e:,.0f} img/s end to end", file=sys.stderr)
    print(f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs, {args.images} JPEGs ~{args.size}px, "
          f"bf16, random weights; total {time.perf_counter() - t_start:.0f} s")
    print(format_table(["model", "decode", "batch", "stage e2e img/s", "stage steady img/s",
                        "bare image fwd img/s", "steady/bare", "target e2e", "met"], rows))


if __name__ == "__main__":
    main()
