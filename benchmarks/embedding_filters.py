"""Benchmark the embedding filters on a generated pool (default 1M rows, 768-d image + text, fp16).

For each filter and implementation it prints wall time and peak memory (each run is a fresh child
process, so the peak is its own), and for D2's approximate kNN its recall@k against exact search on a
sample of rows, side by side. Implementations (``--impl``):

- ``handwritten``: the code before faiss took over (commit ``HANDWRITTEN_REV``: numpy Lloyd k-means,
  hand-written IVF lists and list-major GEMM search), extracted with ``git archive`` and imported in
  place of the working tree's ``poolsieve.filters`` / ``poolsieve.core``;
- ``faiss``: the working tree with faiss everywhere (k-means on ``faiss.Clustering``, D2 with
  ``knn_impl=faiss``: faiss IVF index, fp16 codes);
- ``default``: the working tree's defaults (D2: faiss lists, list-major GEMM search); run only where
  it differs from ``faiss`` (D2);
- ``main``: the filters as they were before memory was bounded (commit ``BASELINE_REV``: the whole pool
  in one process), extracted like ``handwritten``: the side-by-side check that nothing regressed.

``--impl both`` runs the first three; ``--impl main,default`` the two named; kept sets are compared
with the first implementation's (Jaccard). ``--memory-budget`` is handed to the filters (the working
tree's; the older revisions have none). ``--scale`` and ``--cluster`` run the scale and cluster
modes of ``embedding_filters_scale.py`` (peak memory of the whole process tree, fitted per row).

    python benchmarks/embedding_filters.py --rows 1000000 --workdir /tmp/poolsieve-bench
    python benchmarks/embedding_filters.py --rows 1000000 --impl main,default --filters d2_pruning,semdedup
    python benchmarks/embedding_filters.py --rows 20000 --filters d2_pruning --recall-sample 2000 --impl faiss
    python benchmarks/embedding_filters.py --scale 1000000,2000000,4000000 --workdir /tmp/bench-4m

The generated pool: ``rows / 50`` topic centres on the unit sphere; an image embedding is its topic
centre plus isotropic noise of norm ``noise`` (0.6: cosine ~0.86 to the centre, ~0.74 between two rows
of a topic); a caption embedding is a topic-level text centre plus noise (20% of captions come from
another topic, so their CLIP score is low: such a row sits near no cluster of the image+text
concatenation, which is what D2's per-embedding IVF indexes are for); 2% of rows are near-copies of
another row's image (half of them with the same image sha256), a few uids repeat. Scores are the
cosine of image and text.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scale mode's sibling module

FILTERS = ("d2_pruning", "image_based", "dedup", "semdedup")
IMPLS = ("handwritten", "faiss", "main", "default")
HANDWRITTEN_REV = "2767a16"  # the last commit with the hand-written k-means and IVF index
BASELINE_REV = "db3945e"  # main before the embedding filters' memory was bounded (issue 24)
REVISIONS = {"handwritten": HANDWRITTEN_REV, "main": BASELINE_REV}
WORDS = np.array(["a", "photo", "of", "the", "red", "blue", "small", "large", "dog", "cat", "car", "house", "tree", "beach", "city", "night", "art", "food", "portrait", "vintage", "modern", "black", "white", "green", "street", "mountain", "river", "flower"])


# ------------------------------------------------------------------------------ the pool
def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def generate_pool(root: Path, rows: int, shards: int, dim: int, seed: int = 0, key: str = "l14",
                  reference_rows: int = 5000, noise: float = 0.6, *, prefix_ok: bool = False,
                  regenerate: bool = False) -> None:
    """Write ``scores/{shard}.parquet`` + ``.npz`` and ``references/target.npz`` under ``root``.

    A pool generated there before with other parameters is kept (the run stops and says so) unless
    ``regenerate``; with ``prefix_ok`` (the scale and cluster modes, which use a pool's first tables) a
    larger pool of the same rows per table serves as it is."""
    import pandas as pd

    from poolsieve.core.formats import embedding_keys, score_column, write_embeddings

    marker = root / "generated.json"
    spec = {"rows": rows, "shards": shards, "dim": dim, "seed": seed, "key": key, "noise": noise}
    if marker.exists():
        have = json.loads(marker.read_text())
        if have == spec or (prefix_ok and _holds_prefix(have, spec)):
            return
        if not regenerate:
            raise SystemExit(f"{root} holds another generated pool ({have}); asked for {spec}: give another "
                             "--workdir, or --regenerate to replace it")
    for stale in root.glob("exact-knn-*.npy"):  # exact neighbours of a pool generated before
        stale.unlink()
    rng = np.random.default_rng(seed)
    topics = max(2, rows // 50)
    img_centres = unit(rng.standard_normal((topics, dim), dtype=np.float32))
    txt_centres = unit(img_centres + 1.2 * unit(rng.standard_normal((topics, dim), dtype=np.float32)))
    scores_dir = root / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    per_shard = -(-rows // shards)
    img_key, txt_key = embedding_keys(key)
    t0 = time.time()
    for s in range(shards):
        r = np.random.default_rng([seed, s])
        n = min(per_shard, rows - s * per_shard)
        if n <= 0:
            break
        topic = r.integers(0, topics, n)
        img = unit(img_centres[topic] + noise * unit(r.standard_normal((n, dim), dtype=np.float32)))
        txt_topic = np.where(r.random(n) < 0.2, r.integers(0, topics, n), topic)
        txt = unit(txt_centres[txt_topic] + noise * unit(r.standard_normal((n, dim), dtype=np.float32)))
        sha = np.array([f"{h:064x}" for h in r.integers(0, 2**62, n)], dtype=object)
        copies = np.flatnonzero(r.random(n) < 0.02)
        sources = r.integers(0, n, len(copies))
        img[copies] = unit(img[sources] + 0.01 * unit(r.standard_normal((len(copies), dim), dtype=np.float32)))
        same_bytes = copies[: len(copies) // 2]
        sha[same_bytes] = sha[sources[: len(same_bytes)]]
        uid_ints = r.integers(0, 2**63, (n, 2))
        uids = np.array([f"{a:016x}{b:016x}" for a, b in uid_ints], dtype=object)
        uids[r.random(n) < 0.001] = uids[0]
        img16, txt16 = img.astype(np.float16), txt.astype(np.float16)
        clip = (img16.astype(np.float32) * txt16.astype(np.float32)).sum(1)
        lengths = r.integers(1, 12, n)
        text = [" ".join(r.choice(WORDS, size=m)) for m in lengths]
        df = pd.DataFrame({
            "uid": uids, "text": text, "sha256": sha, "status": "success", "error": None,
            "language": np.where(r.random(n) < 0.85, "en", "de"),
            score_column(key): clip.astype(np.float32),
        })
        name = f"{s:05d}"
        df.to_parquet(scores_dir / f"{name}.parquet", index=False)
        write_embeddings(scores_dir / f"{name}.npz", {img_key: img16, txt_key: txt16})
        if s % 10 == 0:
            print(f"generated shard {s + 1}/{shards} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    ref_topics = rng.choice(topics, size=max(1, topics // 100), replace=False)
    ref = unit(img_centres[rng.choice(ref_topics, reference_rows)]
               + noise * unit(rng.standard_normal((reference_rows, dim), dtype=np.float32)))
    (root / "references").mkdir(exist_ok=True)
    np.savez(root / "references" / "target.npz", **{img_key: ref.astype(np.float16)})
    marker.write_text(json.dumps(spec))


def _holds_prefix(have: dict, want: dict) -> bool:
    """Whether pool ``have`` serves for ``want`` read through its first tables: as many rows per table, at
    least as many rows, the same embeddings."""
    same = all(have.get(k) == want[k] for k in ("dim", "seed", "key", "noise"))
    per_table = -(-have["rows"] // have["shards"]) == -(-want["rows"] // want["shards"])
    return same and per_table and have["rows"] >= want["rows"]


# ------------------------------------------------------------------------- one filter, timed
def filter_params(name: str, args: argparse.Namespace, rows: int | None = None) -> dict:
    """The filter's parameters; with ``--sample-rows`` the k-means sample ratio is that many of ``rows``."""
    ratio = min(1.0, args.sample_rows / rows) if args.sample_rows and rows else args.sample_ratio
    params = {
        "d2_pruning": {"fraction": 0.3, "k": args.k, "features": "image+text", "recall": args.recall},
        "image_based": {"clusters": args.clusters, "sample_ratio": ratio, "target": "target"},
        "dedup": {"method": "exact"},
        "semdedup": {"clusters": args.semdedup_clusters, "eps": 0.05, "sample_ratio": ratio},
    }[name]
    if name != "dedup":
        params["device"] = args.device
    if name == "d2_pruning" and args.impl_one == "faiss":
        params["knn_impl"] = "faiss"
    return params


def impls_for(name: str, impl: str) -> list[str]:
    """The implementations to run for filter ``name``: only D2 has a working-tree default apart from faiss."""
    if impl == "both":
        if name == "dedup":
            return ["default"]
        return ["handwritten", "faiss", "default"] if name == "d2_pruning" else ["handwritten", "faiss"]
    return impl.split(",")


def revision_source(workdir: Path, rev: str) -> Path:
    """``poolsieve/{core,filters}`` of revision ``rev`` under ``workdir``, for PYTHONPATH."""
    root = workdir / f"source-{rev}"
    if not (root / "poolsieve" / "filters").exists():
        repo = Path(__file__).resolve().parent.parent
        (root / "poolsieve").mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "core", "filters"],
                                 check=True, stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", str(root / "poolsieve")], input=archive, check=True)
    return root


def open_pool(args: argparse.Namespace, runtime):
    """The benchmark pool (its first ``--max-tables`` tables), with ``--memory-budget`` where the code has one."""
    from poolsieve.core.workspace import Workspace
    from poolsieve.filters.registry import ScoredPool

    tables = Workspace.open(args.workdir).score_tables()[:args.max_tables or None]
    if args.memory_budget and "memory_budget" in ScoredPool.__dataclass_fields__:
        return ScoredPool(tables, runtime, memory_budget=args.memory_budget)
    return ScoredPool(tables, runtime)


def run_d2(pool, params: dict, args: argparse.Namespace) -> tuple[np.ndarray, object, dict]:
    """(kept keys, graph info, recall figures) of D2, on this revision's API."""
    import poolsieve.filters.d2_pruning as d2

    n = pool.member_count() if args.recall_sample else 0
    rows = recall_rows(n, args.recall_sample) if args.recall_sample else None
    if hasattr(d2, "d2_select"):  # bounded memory: the graph is gone after the run, ask for the sample's rows
        result = d2.d2_select(pool, params, graph_rows=rows)
        kept, graph, sample = result.uids.keys, result.graph, result.neighbors
    else:
        result = d2.d2_run(pool, **params)
        keys = result.pairs if hasattr(result, "pairs") else result.keys  # pairs: the hand-written revision
        kept, graph = np.unique(keys[result.order]), result.graph
        sample = graph.neighbors[rows] if rows is not None else None
    recall = {}
    if sample is not None and graph.method == "ivf":
        recall = measure_recall(sample, args.recall_sample, args.k, args.workdir, args.max_tables)
    return kept, graph, recall


def run_one(name: str, args: argparse.Namespace) -> dict:
    from poolsieve.core.runtime import Runtime
    from poolsieve.filters.registry import get_filter

    runtime = Runtime(executor="ray", num_cpus=args.num_cpus) if args.ray else Runtime(executor="local")
    pool = open_pool(args, runtime)
    params = filter_params(name, args, pool.member_count() if args.sample_rows else None)
    out: dict = {"filter": name, "impl": args.impl_one, "params": params, "tables": len(pool.tables)}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    graph, recall = None, {}
    if name == "d2_pruning":
        get_filter(name)
        kept, graph, recall = run_d2(pool, params, args)
    else:
        chosen = get_filter(name)(pool, **params)
        kept = chosen if isinstance(chosen, np.ndarray) else chosen.keys
    out["wall_s"] = time.perf_counter() - t0
    out["kept"] = len(kept)
    out["kept_file"] = str(args.workdir / f"kept-{name}-{args.impl_one}.npy")
    np.save(out["kept_file"], kept)
    out["load_avg_start"] = load0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    out["peak_rss_gib"] = peak_rss_gib()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        out["peak_gpu_gib"] = sys.modules["torch"].cuda.max_memory_allocated() / 2**30
    print(f"RESULT {json.dumps(out)}", file=sys.stderr, flush=True)
    if graph is not None:
        out.update(method=graph.method, nlist=graph.nlist, nprobe=graph.nprobe, candidates=graph.candidates,
                   calibrated_recall=graph.calibrated_recall, **recall)
    runtime.shutdown()
    return out


def peak_rss_gib() -> float:
    """This process's peak resident memory since its exec (``VmHWM``; ``ru_maxrss`` would carry over the
    parent's high-water mark through fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def recall_rows(n: int, sample: int) -> np.ndarray:
    """The seeded rows whose recall@k is measured."""
    return np.sort(np.random.default_rng(12345).choice(n, size=min(sample, n), replace=False))


def exact_cache(workdir: Path, sample: int, k: int, max_tables: int | None = None) -> Path:
    return workdir / f"exact-knn-{sample}-{k}{f'-t{max_tables}' if max_tables else ''}.npy"


def exact_neighbours(workdir: Path, sample: int, k: int, max_tables: int | None = None) -> Path:
    """Search the recall sample's exact ``k`` neighbours once per pool (faiss's exact flat index, the
    fastest exact search here: it is the reference, not a contestant), table by table, and keep them in
    ``workdir``."""
    import faiss

    from poolsieve.core.runtime import Runtime
    from poolsieve.core.workspace import Workspace
    from poolsieve.filters._embeddings import (
        TableEmbeddings,
        feature_names,
        gather_rows,
        pick_embedding_key,
        row_counts,
    )
    from poolsieve.filters.knn.graph import remove_self
    from poolsieve.filters.knn.index import sorted_topk
    from poolsieve.filters.registry import ScoredPool

    cache = exact_cache(workdir, sample, k, max_tables)
    if cache.exists():
        return cache
    t0 = time.perf_counter()
    pool = ScoredPool(Workspace.open(workdir).score_tables()[:max_tables or None], Runtime(executor="local"))
    names = feature_names(pick_embedding_key(pool, None), "image+text")
    counts = row_counts(pool)
    rows = recall_rows(int(sum(counts)), sample)
    queries = gather_rows(pool, names, counts, rows, dtype=np.float32)
    best_d = np.full((len(rows), k + 1), np.inf, np.float32)
    best_i = np.full((len(rows), k + 1), -1, np.int64)
    start = 0
    for t, table in enumerate(pool.tables):
        index = faiss.IndexFlatL2(queries.shape[1])
        index.add(np.ascontiguousarray(TableEmbeddings(table, names).rows(), dtype=np.float32))
        d, i = index.search(queries, k + 1)
        best_d, best_i = sorted_topk(np.concatenate([best_d, d], 1), np.concatenate([best_i, np.where(i >= 0, i + start, -1)], 1),
                                     k + 1)
        start += counts[t]
        if t % 10 == 0:
            print(f"exact kNN of the recall sample: {t + 1}/{len(pool.tables)} tables ({time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
    np.save(cache, remove_self(best_d, best_i, rows)[1])
    print(f"exact kNN of {len(rows):,} rows against {start:,} in {time.perf_counter() - t0:.0f}s", flush=True)
    return cache


def measure_recall(neighbors: np.ndarray, sample: int, k: int, cache_dir: Path, max_tables: int | None = None) -> dict:
    """recall@k of the sample rows' neighbours against the exact neighbours ``exact_neighbours`` found."""
    try:
        from poolsieve.filters.knn.graph import recall_at_k
    except ImportError:  # the hand-written revision
        from poolsieve.filters._knn import recall_at_k

    exact = np.load(exact_cache(cache_dir, sample, k, max_tables))
    return {"recall_at_k": recall_at_k(neighbors, exact), "recall_sample": len(exact)}


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=100)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/poolsieve-embedding-bench"))
    p.add_argument("--filters", default=",".join(FILTERS))
    p.add_argument("--noise", type=float, default=0.6, help="generated pool: noise norm around topic centres")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--recall", type=float, default=0.95, help="D2's IVF recall target (picks nprobe)")
    p.add_argument("--recall-sample", type=int, default=20_000, help="rows whose recall@k is measured")
    p.add_argument("--clusters", type=int, default=10_000, help="image_based k-means clusters")
    p.add_argument("--semdedup-clusters", type=int, default=1_000)
    p.add_argument("--sample-ratio", type=float, default=0.25, help="k-means training sample ratio")
    p.add_argument("--sample-rows", type=int, default=None,
                   help="k-means training sample of this many rows at every pool size (sets the ratio)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ray", action="store_true", help="run on a local Ray (sharded kNN build)")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--impl", default="both", help=f"both, or a comma-separated list of {', '.join(IMPLS)}")
    p.add_argument("--memory-budget", default=None, help="the filters' memory budget (e.g. 2GiB)")
    p.add_argument("--rss-trace", type=Path, default=None,
                   help="append the child's resident memory (cluster mode: each node's), and its file-backed part, "
                        "about once a second to this file")
    p.add_argument("--max-tables", type=int, default=None, help="use only the pool's first N tables")
    p.add_argument("--scale", default=None, help="scale mode: comma-separated row counts (e.g. 1000000,2000000,4000000)")
    p.add_argument("--prefix-pools", action="store_true",
                   help="scale mode: one pool of the largest size, its first tables at the smaller sizes")
    p.add_argument("--previous", default=None,
                   help="scale mode: comma-separated logs of earlier scale runs whose sizes join the fit")
    p.add_argument("--cluster", default=None, help="cluster mode: comma-separated node counts (e.g. 2,4)")
    p.add_argument("--cluster-rows", default=None, help="cluster mode: comma-separated row counts")
    p.add_argument("--node-memory", default="2GiB", help="cluster mode: each node's memory (Ray resource and budget)")
    p.add_argument("--regenerate", action="store_true", help="replace a pool generated in --workdir with other parameters")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--impl-one", default="default", help=argparse.SUPPRESS)
    p.add_argument("--nodes-one", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    bad = [i for i in args.impl.split(",") if i not in (*IMPLS, "both")]
    if bad:
        p.error(f"--impl: unknown {', '.join(bad)}")
    if args.one and args.nodes_one:
        import embedding_filters_scale

        print(json.dumps(embedding_filters_scale.run_on_cluster(args.one, args)))
        return 0
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return 0
    if args.exact:
        exact_neighbours(args.workdir, args.recall_sample, args.k, args.max_tables)
        return 0
    if args.scale or args.cluster:
        import embedding_filters_scale

        return embedding_filters_scale.main(args, argv)
    t0 = time.perf_counter()
    generate_pool(args.workdir, args.rows, args.shards, args.dim, noise=args.noise, regenerate=args.regenerate)
    print(f"pool: {args.rows:,} rows, {args.shards} shards, {args.dim}-d image + text fp16 "
          f"(ready in {time.perf_counter() - t0:.0f}s) at {args.workdir}", flush=True)
    if "d2_pruning" in args.filters.split(",") and args.recall_sample:
        # in a child process of its own, so that this one stays small while the timed runs go on
        subprocess.run([sys.executable, __file__, "--exact", *argv], check=True)
    results = []
    for name in args.filters.split(","):
        first = None
        for impl in impls_for(name, args.impl):
            res = run_child(name, impl, args, argv)
            if res is None:
                continue
            kept = np.load(res["kept_file"])
            if kept.dtype.names:  # u8,u8 pairs from the hand-written revision
                from poolsieve.core.uids import pairs_to_keys

                kept = pairs_to_keys(kept)
            first = kept if first is None else first
            res["jaccard_first"] = jaccard(first, kept)
            results.append(res)
            print(json.dumps(res), flush=True)
    print_table(results)
    return 0


def run_child(name: str, impl: str, args: argparse.Namespace, argv: list[str], extra: tuple[str, ...] = ()) -> dict | None:
    """Run one filter in a fresh child process (its own peak memory); add the whole process tree's peak
    resident memory, sampled (``tree_peak_gib``). None when the child fails."""
    from embedding_filters_scale import TreeMonitor

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if impl in REVISIONS:
        env["PYTHONPATH"] = os.pathsep.join([str(revision_source(args.workdir, REVISIONS[impl])), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--one", name, "--impl-one", impl, *argv, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    with TreeMonitor(proc.pid, trace=args.rss_trace) as monitor:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        print(f"{name} ({impl}): failed (exit {proc.returncode})", flush=True)
        return None
    res = json.loads(out.strip().splitlines()[-1])
    res["tree_peak_gib"] = max(monitor.peak_gib, res["peak_rss_gib"])
    res["tree_cpu_s"] = max(monitor.cpu_s, res["cpu_s"])
    return res


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b)) / union if union else 1.0


def print_table(results: list[dict]) -> None:
    print(f"\nload average now: {' '.join(f'{v:.1f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
    print("filter       impl         wall_s   cpu_s  peak_GiB  tree_GiB     kept  same_as_1st  recall@k              kNN")
    for r in results:
        rec = f"{r['recall_at_k']:.3f} (n={r['recall_sample']})" if "recall_at_k" in r else "-"
        knn = "-"
        if r.get("method") == "ivf":
            knn = f"ivf nlist={r['nlist']} nprobe={r['nprobe']} candidates={r['candidates']}"
        elif r.get("method"):
            knn = r["method"]
        print(f"{r['filter']:<12} {r['impl']:<11} {r['wall_s']:7.1f} {r['cpu_s']:7.1f}  {r['peak_rss_gib']:8.2f}  "
              f"{r.get('tree_peak_gib', r['peak_rss_gib']):8.2f} {r['kept']:8d}  {r['jaccard_first']:11.4f}  {rec:<20}  {knn}")


if __name__ == "__main__":
    sys.exit(main())
