"""Download throughput: poolsieve's download stage vs a bare img2dataset call, same settings, same server.

    python benchmarks/download_speed.py --samples 2000 --per-shard 250 --processes 2 --threads 16

Generates the built-in pool, serves it on 127.0.0.1, then times (wall clock, start-up included) a bare
``img2dataset.download`` and ``poolsieve``'s ``download`` on the same metadata, alternating which goes
first over ``--repeats`` rounds. Prints samples/s side by side and the ratio (poolsieve / bare): the
wrapper should not slow img2dataset down (~1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def bare_img2dataset(metadata_dir: Path, out: Path, args: argparse.Namespace) -> float:
    import img2dataset

    t = time.perf_counter()
    img2dataset.download(
        url_list=str(metadata_dir), output_folder=str(out), input_format="parquet", url_col="url",
        caption_col="text", save_additional_columns=["uid"], output_format="webdataset",
        image_size=args.image_size, resize_mode="keep_ratio_largest", resize_only_if_bigger=True,
        encode_format="jpg", encode_quality=95, number_sample_per_shard=args.per_shard,
        processes_count=args.processes, thread_count=args.threads, timeout=10, retries=0,
        compute_hash="sha256", oom_shard_count=5, enable_wandb=False,
    )
    return time.perf_counter() - t


def poolsieve_download(root: Path, args: argparse.Namespace) -> float:
    from poolsieve.core.runtime import Runtime
    from poolsieve.core.workspace import Workspace
    from poolsieve.pipeline.download.stage import DownloadConfig, download

    cfg = DownloadConfig(image_size=args.image_size, samples_per_shard=args.per_shard, processes=args.processes,
                         threads=args.threads, timeout=10.0, retries=0, allow_networks=["127.0.0.1/32"])
    t = time.perf_counter()
    download(Workspace.open(root), cfg, Runtime(executor="local"), overwrite=True)
    return time.perf_counter() - t


def count_successes(folder: Path) -> int:
    import json

    return sum(json.loads(p.read_text())["successes"] for p in folder.glob("*_stats.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no update check over the network, for both

    from poolsieve.pipeline.demo.image_server import ImageServer
    from poolsieve.pipeline.demo.synthetic_pool import PoolSpec, generate_pool

    base = args.keep or Path(tempfile.mkdtemp(prefix="poolsieve-bench-"))
    root = base / "ws"
    (root / "synthetic").mkdir(parents=True, exist_ok=True)
    with ImageServer(root / "synthetic") as server:
        generate_pool(root, PoolSpec(num_samples=args.samples, samples_per_file=max(args.per_shard, 1000),
                                     image_size=256, seed=0, base_url=server.url))
        times: dict[str, list[float]] = {"img2dataset": [], "poolsieve": []}
        for r in range(args.repeats):
            order = ["img2dataset", "poolsieve"] if r % 2 == 0 else ["poolsieve", "img2dataset"]
            for name in order:
                if name == "img2dataset":
                    out = base / "bare"
                    shutil.rmtree(out, ignore_errors=True)
                    times[name].append(bare_img2dataset(root / "metadata", out, args))
                    done = count_successes(out)
                else:
                    times[name].append(poolsieve_download(root, args))
                    done = count_successes(root / "shards")
                if done != args.samples:
                    raise SystemExit(f"{name}: {done} of {args.samples} samples downloaded")
    rates = {k: [args.samples / t for t in v] for k, v in times.items()}
    print(f"\n{args.samples} samples, {args.per_shard}/shard, {args.processes} processes x {args.threads} threads, "
          f"{args.image_size}px, {args.repeats} rounds (wall clock incl. start-up)")
    print(f"{'':12} {'median s':>9} {'samples/s':>10}   runs (samples/s)")
    for k in ("img2dataset", "poolsieve"):
        print(f"{k:12} {statistics.median(times[k]):9.2f} {statistics.median(rates[k]):10.1f}   "
              + ", ".join(f"{x:.1f}" for x in rates[k]))
    ratio = statistics.median(rates["poolsieve"]) / statistics.median(rates["img2dataset"])
    print(f"ratio poolsieve / img2dataset: {ratio:.2f}")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
