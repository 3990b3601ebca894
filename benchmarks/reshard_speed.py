"""Reshard speed, side by side in one run: poolsieve vs a plain sequential copy (the ceiling) vs DataComp.

Generates an img2dataset-layout pool of ``--pool-gb`` (random-byte "jpg" members of varying size,
a caption and a json per sample), a subset of ``--fraction`` of its uids, then times, on the same
input and subset:

* ``ceiling``: read every pool tar sequentially (8 MiB blocks) and write as many bytes as the
  reshard writes: a plain read+write of the same bytes;
* ``poolsieve``: ``reshard()`` on a local Ray with ``--num-cpus`` workers (Ray and its workers
  started by one untimed run beforehand, as on a running cluster);
* ``datacomp``: mlfoundations/datacomp ``resharder.py`` with ``-j --num-cpus`` (found with
  ``--datacomp-resharder`` / ``$DATACOMP_RESHARDER`` and run by ``--datacomp-python`` /
  ``$DATACOMP_PYTHON``; it needs webdataset 0.2.31, so give it its own venv). Its wall time
  includes interpreter start-up; its own "processed ... in X s" figure (workers only) is shown too
  and the ratio uses the faster of the two.

MB/s is pool bytes / seconds for every column. Two modes: ``cached`` (page cache warm, no flush:
CPU and memory bound) and ``synced`` (each timing ends with ``sync``: written bytes reach the disk).
The pool is deleted afterwards unless ``--keep``.

    python benchmarks/reshard_speed.py --datacomp-resharder /work/datacomp-src/resharder.py \\
        --datacomp-python /work/dcvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.formats import write_subset
from poolsieve.core.runtime import Runtime
from poolsieve.core.tar_io import END_OF_ARCHIVE, padding, ustar_header
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard

BLOCK_READ = 8 << 20


def generate_pool(ws: Workspace, pool_bytes: int, per_shard: int, image_kb: int, seed: int) -> list[str]:
    """Write img2dataset-layout shards totalling about ``pool_bytes``; return the uids in pool order."""
    marker = ws.root / "bench_pool.json"
    spec = {"pool_bytes": pool_bytes, "per_shard": per_shard, "image_kb": image_kb, "seed": seed}
    if marker.exists() and json.loads(marker.read_text())["spec"] == spec:
        return json.loads(marker.read_text())["uids"]
    shutil.rmtree(ws.shards_dir, ignore_errors=True)
    ws.shards_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    uids: list[str] = []
    total, shard = 0, 0
    while total < pool_bytes:
        name = f"{shard:05d}"
        with open(ws.shards_dir / f"{name}.tar", "wb") as f:
            for i in range(per_shard):
                key, uid = f"{name}{i:04d}", rng.bytes(16).hex()
                jpg = rng.bytes(int(image_kb * 1024 * rng.uniform(0.5, 1.5)))
                txt = f"a photo of sample {key}".encode()
                meta = json.dumps({"uid": uid, "caption": txt.decode(), "key": key, "status": "success",
                                   "url": f"http://example.invalid/{uid}.jpg"}).encode()
                for ext, data in (("jpg", jpg), ("txt", txt), ("json", meta)):
                    f.write(ustar_header(f"{key}.{ext}", len(data)) + data + padding(len(data)))
                uids.append(uid)
            f.write(END_OF_ARCHIVE)
            total += f.tell()
        (ws.shards_dir / f"{name}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))
        shard += 1
    marker.write_text(json.dumps({"spec": spec, "uids": uids}))
    return uids


def pool_tars(ws: Workspace) -> list[Path]:
    return ws.shard_tars()


def read_all(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(BLOCK_READ):
                pass


def sequential_copy(paths: list[Path], out_path: Path, write_bytes: int) -> None:
    """The ceiling: read every input byte in order, write ``write_bytes`` of them."""
    left = write_bytes
    with open(out_path, "wb", buffering=0) as out:
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while block := f.read(BLOCK_READ):
                    if left > 0:
                        out.write(block[:left])
                        left -= len(block)


def timed(fn, synced: bool) -> tuple[float, Any]:
    """Seconds ``fn()`` takes (then ``sync`` when ``synced``) and what it returned."""
    start = time.perf_counter()
    result = fn()
    if synced:
        os.sync()
    return time.perf_counter() - start, result


def run_datacomp(args: argparse.Namespace, ws: Workspace, out_dir: Path) -> tuple[int, float | None]:
    """Run DataComp's resharder; return (samples written, its own workers-only seconds)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cmd = [args.datacomp_python, args.datacomp_resharder, "-i", str(ws.shards_dir), "-o", str(out_dir),
           "-s", str(ws.subset_path("bench")), "--shard-format", "{:05d}.tar",
           "--shard-stats-format", "{:05d}_stats.json", "-j", str(args.num_cpus),
           "--shard-size", str(args.shard_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(args.datacomp_resharder).parent,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"DataComp resharder failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    own = re.search(r"processed \d+ images in ([0-9.]+)s", proc.stderr)
    meta = json.loads((out_dir / "meta.json").read_text())
    return int(meta["output_count"]), float(own.group(1)) if own else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool-dir", type=Path, default=Path("/tmp/poolsieve-reshard-bench"))
    p.add_argument("--pool-gb", type=float, default=2.2, help="pool size in GB (issue 7 asks for at least 2)")
    p.add_argument("--samples-per-shard", type=int, default=5000)
    p.add_argument("--image-kb", type=int, default=40, help="mean image size in KiB (0.5x to 1.5x)")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the pool's uids in the subset")
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3, help="timings per method and mode (median is shown)")
    p.add_argument("--modes", default="cached,synced", help="comma list of cached, synced")
    p.add_argument("--datacomp-resharder", default=os.environ.get("DATACOMP_RESHARDER"))
    p.add_argument("--datacomp-python", default=os.environ.get("DATACOMP_PYTHON", sys.executable))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the generated pool")
    args = p.parse_args()

    ws = Workspace.create(args.pool_dir)
    t0 = time.perf_counter()
    uids = generate_pool(ws, int(args.pool_gb * 1e9), args.samples_per_shard, args.image_kb, args.seed)
    tars = pool_tars(ws)
    pool_bytes = sum(t.stat().st_size for t in tars)
    rng = np.random.default_rng(args.seed + 1)
    chosen = [uids[i] for i in np.flatnonzero(rng.random(len(uids)) < args.fraction)]
    write_subset(ws.subset_path("bench"), uids_to_pairs(chosen))
    os.sync()
    print(f"pool: {len(tars)} shards, {len(uids)} samples, {pool_bytes / 1e9:.2f} GB at {ws.root} "
          f"(ready in {time.perf_counter() - t0:.0f} s); subset: {len(chosen)} uids ({args.fraction:.0%})")
    have_dc = bool(args.datacomp_resharder) and Path(args.datacomp_resharder).is_file()
    if not have_dc:
        print("datacomp: skipped (pass --datacomp-resharder PATH/resharder.py and --datacomp-python PYTHON, "
              "or set DATACOMP_RESHARDER / DATACOMP_PYTHON)")

    runtime = Runtime(executor="ray", num_cpus=args.num_cpus)
    runtime.ensure_ray()
    cfg = ReshardConfig(subset="bench", shard_size=args.shard_size)
    reshard(ws, cfg, runtime, overwrite=True)  # untimed: Ray's worker processes start, as on a running cluster
    scratch = ws.root / "ceiling.bin"
    rows = []
    try:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            synced = mode == "synced"
            times: dict[str, list[float]] = {"ceiling": [], "poolsieve": [], "datacomp": [], "datacomp workers": []}
            read_all(tars)  # same warm page cache for everyone
            out_bytes = 0
            for _ in range(args.repeats):
                seconds, summary = timed(lambda: reshard(ws, cfg, runtime, overwrite=True), synced)
                times["poolsieve"].append(seconds)
                out_bytes = summary["bytes_written"]
                times["ceiling"].append(timed(lambda b=out_bytes: sequential_copy(tars, scratch, b), synced)[0])
                scratch.unlink()
                if have_dc:
                    seconds, (count, own) = timed(lambda: run_datacomp(args, ws, ws.root / "datacomp"), synced)
                    times["datacomp"].append(seconds)
                    if own is not None:
                        times["datacomp workers"].append(own)
                    if count != summary["output_count"]:
                        raise SystemExit(f"outputs differ: DataComp wrote {count} samples, "
                                         f"poolsieve {summary['output_count']}")
            med = {k: statistics.median(v) for k, v in times.items() if v}
            rate = {k: pool_bytes / 1e6 / s for k, s in med.items()}
            print(f"\n== {mode}: {pool_bytes / 1e9:.2f} GB pool, {out_bytes / 1e9:.2f} GB written, "
                  f"median of {args.repeats}")
            for k, s in med.items():
                spread = f"(runs {min(times[k]):.2f}..{max(times[k]):.2f} s)"
                print(f"  {k:<17} {s:7.2f} s  {rate[k]:8.0f} MB/s  {rate[k] / rate['ceiling']:5.2f} x ceiling  {spread}")
            dc_best = max((rate[k] for k in ("datacomp", "datacomp workers") if k in rate), default=None)
            verdict = (f"poolsieve / ceiling = {rate['poolsieve'] / rate['ceiling']:.2f} (target >= 0.7)"
                       + (f"; poolsieve / datacomp = {rate['poolsieve'] / dc_best:.2f} (target > 1)" if dc_best else ""))
            print(f"  {verdict}")
            rows.append((mode, rate))
    finally:
        runtime.shutdown()
        if not args.keep:
            shutil.rmtree(ws.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
