"""D2's calibration search, side by side: the exact ``k`` nearest pool rows of the calibration rows, searched
table by table as ``knn.sharded.exact_search`` does, by ``exact.exact_topk`` (now: a row is admitted only
when its GEMM distance can reach the query's ``k``-th nearest so far, ``exact.admission_limit``, the
first table's ``k``-th nearest bounding the other tables' searches) against
the same search taking a fixed ``2 k`` candidates of each piece by their GEMM distances (before: a
partial sort of every (query, row) distance, on the queries' axis after a transpose).

The pool is one that ``benchmarks/embedding_filters.py`` generated (``--pool DIR``: its ``scores``
folder of tables with ``l14_img`` / ``l14_txt``); ``--tables`` limits how many are searched.

    python benchmarks/exact_topk.py --pool /tmp/bench-1m [--tables 20 --queries 2000 --repeats 2]

Prints each arm's best time, the ratio, and checks that both give the same ids and distance bits.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from poolsieve.filters._embeddings import TableEmbeddings
from poolsieve.filters._halves import to_float32
from poolsieve.filters._topk import smallest_k, sorted_topk
from poolsieve.filters.knn import exact
from poolsieve.filters.knn.exact import EXACT_ROWS, exact_topk
from poolsieve.filters.knn.index import pair_distances, run_units

NAMES = ["l14_img", "l14_txt"]
K = 6  # D2's k = 5, plus the row itself


def fixed_candidates_topk(base, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Before: each piece's ``2 k`` smallest GEMM distances per query, their ``pair_distances``, merged."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    q_sq = np.einsum("ij,ij->i", q, q)
    best_d = np.full((len(q), 0), np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    threads = os.cpu_count() or 1
    for lo in range(0, len(base), EXACT_ROWS):
        block = base.rows(lo, lo + EXACT_ROWS)
        piece = -(-len(block) // threads)
        starts = list(range(0, len(block), piece))
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def search_piece(s: int, block=block, lo=lo, piece=piece, found=found) -> None:
            x = to_float32(block[s:s + piece])
            dist = x @ q.T
            dist *= -2
            dist += np.einsum("ij,ij->i", x, x)[:, None]
            dist += q_sq[None, :]
            np.maximum(dist, 0, out=dist)
            dist = np.ascontiguousarray(dist.T)
            part = ids[lo + s:lo + s + len(x)]
            pick = smallest_k(dist, 2 * k, part)
            del dist
            exact = np.empty(pick.shape, dtype=np.float32)
            for qs in range(0, len(q), 256):
                at = slice(qs, qs + 256)
                exact[at] = pair_distances(q[at], x[pick[at]])
            found[s] = (exact, part[pick])

        run_units(search_piece, starts, "cpu")
        best_d = np.concatenate([best_d, *(found[s][0] for s in starts)], axis=1)
        best_i = np.concatenate([best_i, *(found[s][1] for s in starts)], axis=1)
        best_d, best_i = sorted_topk(best_d, best_i, k)
    return sorted_topk(best_d, best_i, k)


def search_tables(topk, tables: list[Path], queries: np.ndarray, bounded: bool) -> tuple[np.ndarray, np.ndarray]:
    """``topk`` against every table (its rows' ids: their place in the tables), merged as the calibration
    merges; ``bounded``: the first table's ``K``-th nearest bound the others' searches."""
    parts, start, bound = [], 0, None
    for table in tables:
        reader = TableEmbeddings(table, NAMES)
        ids = np.arange(start, start + len(reader))
        parts.append(topk(reader, ids, queries, K, bound) if bounded else topk(reader, ids, queries, K))
        if bounded and bound is None:
            bound = parts[0][0][:, K - 1]
        start += len(reader)
    return sorted_topk(np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1), K)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", type=Path, required=True, help="a workdir of benchmarks/embedding_filters.py")
    p.add_argument("--tables", type=int, default=20)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    tables = sorted((args.pool / "scores").glob("*.parquet"))[:args.tables]
    if not tables:
        raise SystemExit(f"no tables in {args.pool / 'scores'}")
    first = TableEmbeddings(tables[0], NAMES)
    rng = np.random.default_rng(0)
    queries = first.rows(0, len(first))[np.sort(rng.choice(len(first), min(args.queries, len(first)), replace=False))]
    rows = sum(len(TableEmbeddings(t, NAMES)) for t in tables)
    print(f"{len(queries):,} queries x {rows:,} rows in {len(tables)} tables, {queries.shape[1]}-d, "
          f"{os.cpu_count()} cores, k={K}")
    results, times = {}, {}
    for name, fn, bounded in (("fixed 2k candidates per piece (before)", fixed_candidates_topk, False),
                              ("admission bound (now)", exact_topk, True)):
        best = np.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            results[name] = search_tables(fn, tables, queries, bounded)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
        print(f"{name:42s} {best:8.2f} s  {len(queries) * rows / best / 1e6:8.1f} M pairs/s", flush=True)
    (d0, i0), (d1, i1) = results.values()
    same = np.array_equal(i0, i1) and np.array_equal(d0.view(np.uint32), d1.view(np.uint32))
    before, now = times.values()
    print(f"ratio: {before / now:.2f}x faster; same ids and distance bits: {same}")
    print(f"(admission: {exact.__name__}.admission_limit)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
