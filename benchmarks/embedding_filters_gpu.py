"""GPU run of the embedding-filter benchmark (same pool and sizes), plus a CPU/GPU agreement check.

Needs a CUDA GPU visible to torch. With faiss's GPU build (``pip install .[gpu]``) k-means and D2's
faiss IVF index run on the GPU through faiss; without it they run on CPU faiss (D2's GEMM index still
uses the GPU through torch).

    python benchmarks/embedding_filters_gpu.py --rows 1000000 --workdir /tmp/poolsieve-bench
    python benchmarks/embedding_filters_gpu.py --agreement-only --agreement-rows 20000

1. Agreement: on a small generated pool, D2 (exact kNN, and IVF on faiss with fixed ``nprobe``),
   image_based and semdedup run on ``cpu`` and on ``cuda``; it prints the fraction of identical
   neighbour lists and the Jaccard index of kept sets.
2. Benchmark: ``embedding_filters.py --device cuda`` on the full pool, every implementation side by side
   (wall time, peak host memory, recall@k; peak GPU memory per run is printed by the child processes
   on stderr). Options after the script's own go to ``embedding_filters.py``, so the scale mode runs
   on the GPU too: ``--scale 1000000,4000000 --memory-budget 8GiB --impl default``.

The filters keep their host memory within ``--memory-budget`` on the GPU path as on the CPU one; with
``knn_impl=faiss`` (the default on a GPU when the index fits the budget) faiss's IVF index holds every
row, in host memory and on the GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import embedding_filters  # noqa: E402 - the sibling benchmark script


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b)) / union if union else 1.0


def agreement(rows: int, workdir: Path) -> None:
    from poolsieve.core.workspace import Workspace
    from poolsieve.filters.d2_pruning import d2_select
    from poolsieve.filters.image_based import image_based_run
    from poolsieve.filters.registry import ScoredPool
    from poolsieve.filters.semdedup import semdedup_run

    embedding_filters.generate_pool(workdir, rows, max(1, rows // 10_000), 768)
    pool = ScoredPool(Workspace.open(workdir).score_tables())
    out = {}
    ivf = {"knn": "ivf", "nlist": 64, "nprobe": 8, "knn_impl": "faiss"}
    rows = np.arange(pool.member_count())
    for device in ("cpu", "cuda"):
        t0 = time.perf_counter()
        d2 = d2_select(pool, {"fraction": 0.3, "k": 5, "knn": "exact", "device": device}, graph_rows=rows)
        d2_ivf = d2_select(pool, {"fraction": 0.3, "k": 5, "device": device, **ivf}, graph_rows=rows)
        ib = image_based_run(pool, target="target", clusters=max(2, rows // 100), device=device)
        sd = semdedup_run(pool, eps=0.05, clusters=max(1, rows // 1000), device=device)
        out[device] = (d2, ib, sd, time.perf_counter() - t0, d2_ivf)
    (d2c, ibc, sdc, tc, ivc), (d2g, ibg, sdg, tg, ivg) = out["cpu"], out["cuda"]
    same_lists = float((d2c.neighbors == d2g.neighbors).all(axis=1).mean())
    from poolsieve.filters._device import faiss_gpu_available

    print(f"agreement on {rows:,} rows (cpu {tc:.1f}s, cuda {tg:.1f}s; faiss GPU build: {faiss_gpu_available()}):")
    print(f"  d2 faiss IVF (nprobe=8): identical neighbour lists "
          f"{float((ivc.neighbors == ivg.neighbors).all(axis=1).mean()):.4f}; "
          f"kept Jaccard {jaccard(ivc.uids.keys, ivg.uids.keys):.4f}")
    print(f"  d2 exact kNN: identical neighbour lists {same_lists:.4f}; "
          f"max |distance diff| {np.abs(d2c.distances - d2g.distances).max():.2e}")
    print(f"  d2 kept Jaccard {jaccard(d2c.uids.keys, d2g.uids.keys):.4f}; "
          f"identical order {np.array_equal(d2c.order, d2g.order)}")
    print(f"  image_based: max |centroid diff| {np.abs(ibc['centroids'] - ibg['centroids']).max():.2e}; "
          f"kept Jaccard {jaccard(ibc['uids'].keys, ibg['uids'].keys):.4f}")
    print(f"  semdedup kept Jaccard {jaccard(sdc['uids'].keys, sdg['uids'].keys):.4f}", flush=True)


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agreement-only", action="store_true")
    p.add_argument("--agreement-rows", type=int, default=20_000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/poolsieve-embedding-bench"))
    args, rest = p.parse_known_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to run", file=sys.stderr)
        return 1
    print(f"GPU: {torch.cuda.get_device_name(0)}", flush=True)
    agreement(args.agreement_rows, args.workdir.with_name(args.workdir.name + "-agreement"))
    if args.agreement_only:
        return 0
    return embedding_filters.main(["--device", "cuda", "--workdir", str(args.workdir), *rest])


if __name__ == "__main__":
    sys.exit(main())
