"""Train-stage throughput against the same model stepping on an in-memory batch, side by side in one run.

    python benchmarks/train_throughput.py                          # poolsieve-tiny, CPU
    python benchmarks/train_throughput.py --model ViT-B-32 --batch 1024 --image-size 224 --precision amp_bf16 \\
        --samples 40960 --images 20000                             # on a GPU node

It writes a webdataset of JPEG pairs (the resharder's layout), runs the whole train stage on it
(``train_clip``: open_clip's trainer reading and decoding the shards with its data-loader workers), then
steps the very same model, loss and optimizer in this process on one synthetic batch kept in memory,
and prints samples/s of both, in steady state (median per-step rate after a warm-up, from open_clip's
own per-step log for the stage) and over the whole run (process start, model build and checkpoints
included for the stage; model build included for the bare loop), with their ratios.
Target on a CPU machine with the tiny model: steady-state ratio >= 0.9.

On a shared machine other processes decide most of a CPU step's time (NOTES: 30-40x slower at load
average 15), so the bare loop runs both just before and just after the stage and its two medians are
averaged; the load average at each point is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

_RATE = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s")


def write_data(folder: Path, images: int, image_size: int) -> None:
    from poolsieve.pipeline.demo.seed_set import write_seed_set

    write_seed_set(folder, images, seed=0, image_size=image_size, samples_per_shard=500)


def stage(data: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(steady samples/s, whole-run samples/s) of ``train_clip``."""
    from poolsieve.train.config import TrainConfig
    from poolsieve.train.trainer import train_clip

    cfg = TrainConfig(scale="tiny", model=args.model, samples_seen=args.samples, batch_size=args.batch,
                      num_checkpoints=1, threads=args.threads, workers=args.workers, log_every_n_steps=1,
                      precision=args.precision, seed=0)
    start = time.perf_counter()
    s = train_clip(data, out, cfg)
    whole = s["samples_seen"] / (time.perf_counter() - start)
    rates = [float(m.group(1)) for line in (out / "out.log").read_text().splitlines() if (m := _RATE.search(line))]
    return statistics.median(rates[args.warmup:]), whole


def bare(args: argparse.Namespace, steps: int) -> tuple[float, float]:
    """(steady, whole) samples/s of ``steps`` steps of the same model, loss and optimizer on one in-memory
    batch (``args.warmup`` more are left out of the steady median)."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    from poolsieve.core.models import register_model_configs

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    register_model_configs()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, device=device, output_dict=True)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(args.batch, 3, size, size, device=device)
    texts = open_clip.get_tokenizer(args.model)(["a red square"] * args.batch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loss_fn = ClipLoss()
    from poolsieve.train.config import resolve_precision

    precision = resolve_precision(args.precision, "", device == "cuda")  # what the stage resolves
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16
    amp = precision.startswith("amp") and device == "cuda"
    steps += args.warmup
    times = []
    model.train()
    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=amp):
            out = model(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    whole = steps * args.batch / (time.perf_counter() - start)
    return args.batch / statistics.median(times[args.warmup:]), whole


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="poolsieve-tiny")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--samples", type=int, default=6400, help="samples seen by the stage run")
    p.add_argument("--images", type=int, default=4000, help="samples in the generated webdataset")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of both trainers")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers of the stage")
    p.add_argument("--precision", default="auto")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the steady-state median")
    args = p.parse_args(argv)
    half = max(5, args.samples // args.batch // 2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_data(data, args.images, args.image_size)
        loads = [os.getloadavg()[0]]
        before = bare(args, half)
        loads.append(os.getloadavg()[0])
        stage_steady, stage_whole = stage(data, Path(tmp) / "run", args)
        loads.append(os.getloadavg()[0])
        after = bare(args, half)
        loads.append(os.getloadavg()[0])
    bare_steady, bare_whole = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    print(f"model {args.model}, batch {args.batch}, {args.samples} samples, threads {args.threads}, "
          f"{os.cpu_count()} CPUs")
    print("load average (1 min) before bare / before stage / after stage / after bare: "
          + " / ".join(f"{x:.2f}" for x in loads))
    print(f"bare steady before / after the stage: {before[0]:.1f}/s / {after[0]:.1f}/s")
    print(f"{'':<12}{'stage (shards)':>16}{'bare (memory)':>16}{'ratio':>8}")
    print(f"{'steady':<12}{stage_steady:>14.1f}/s{bare_steady:>14.1f}/s{stage_steady / bare_steady:>8.2f}")
    print(f"{'whole run':<12}{stage_whole:>14.1f}/s{bare_whole:>14.1f}/s{stage_whole / bare_whole:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
