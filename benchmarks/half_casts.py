"""D2's exact re-rank, side by side: float16 -> float32 casts by numpy's ``astype`` or
``filters._halves.to_float32`` (alone, then inside the re-rank), re-rank blocks of 256 queries (before)
or ``RERANK_BLOCK``, and every candidate's exact distance or only the shortlist's (``graph._shortlist``,
with the search's GEMM distances), the shortlist in those blocks or with the vectors read in order
(``in_order``: each block of the index cast once, as from disk). The re-rank has the benchmark pool's
shape: 2 parts x 768-d, 41 candidates per part from a real IVF search (nprobe 4) of fp16 rows. With ``--on-disk DIR`` the same
indexes are saved there and read from disk as a search task reads them at scale: every candidate's
vectors row by row (the re-rank before the shortlist) against the shortlist reading in file order, the
latter casting every pair's query and candidate rows (before b12a09b), each query and each whole block
of the file once (before the asked-rows cast), or each query and only the rows of a block asked for (now:
fewer than all when a pool is large against the re-rank's queries, e.g. ``--rows 1000000``).

    python benchmarks/half_casts.py [--rows 200000 --queries 8192 --repeats 3 --on-disk /tmp/half-casts]

Prints the best of ``--repeats`` for each arm and the ratios; checks that every arm gives the same bits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import poolsieve.filters.knn.graph as graph
import poolsieve.filters.knn.index as index
from poolsieve.filters._halves import to_float32
from poolsieve.filters.knn.index import index_from_labels


def best_of(repeats: int, fn) -> tuple[float, object]:
    fn()  # warm: first-touch page faults
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def numpy_cast(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--on-disk", type=Path, default=None, help="also time indexes read from disk, saved in this folder")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = np.concatenate([(rng.standard_normal((min(100_000, args.rows - s), 1536), dtype=np.float32) * 0.036)
                        .astype(np.float16) for s in range(0, args.rows, 100_000)])

    block = x[: 16 * 82]
    t_np, a = best_of(args.repeats * 20, lambda: block.astype(np.float32))
    t_fast, b = best_of(args.repeats * 20, lambda: to_float32(block))
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    values = block.size
    print(f"cast of {values:,} halves: numpy {values / t_np / 1e6:,.0f} M/s, to_float32 {values / t_fast / 1e6:,.0f} M/s, "
          f"ratio {t_np / t_fast:.2f}x")

    labels = rng.integers(0, 400, args.rows)
    centroids = np.zeros((400, 768), np.float32)
    parts = [index_from_labels(x[:, :768], centroids, labels), index_from_labels(x[:, 768:], centroids, labels)]
    slices = [slice(0, 768), slice(768, 1536)]
    queries = x[: args.queries]
    probes = np.stack([rng.permutation(400)[:4] for _ in range(args.queries)])
    found = [part.search(queries[:, sl], 41, 4, "cpu", probes=probes) for part, sl in zip(parts, slices, strict=True)]
    cand, cand_d = [f[1] for f in found], [f[0] for f in found]
    now_block = graph.RERANK_BLOCK
    arms = {}
    for cast_name, cast in (("numpy", numpy_cast), ("to_float32", to_float32)):
        for block_rows in (256, now_block, "in order"):
            for short in (False, True):
                if (short and (cast_name, block_rows) not in (("to_float32", now_block), ("to_float32", "in order"))
                        or not short and block_rows == "in order"):
                    continue
                index.to_float32 = cast  # what index.as_float32 (the re-rank's cast) calls
                graph.RERANK_BLOCK = now_block if block_rows == "in order" else block_rows
                t, out = best_of(args.repeats, lambda s=short, b=block_rows: graph.rerank(
                    queries, parts, slices, cand, 6, cand_d=cand_d if s else None, in_order=b == "in order"))
                arms[(cast_name, block_rows, short)] = (t, out)
    index.to_float32, graph.RERANK_BLOCK = to_float32, now_block
    first = next(iter(arms.values()))[1]
    for key, (_, out) in arms.items():
        assert all(np.array_equal(o, f) for o, f in zip(out, first, strict=True)), f"{key} differs"
    base = arms[("numpy", 256, False)][0]
    print(f"D2 re-rank of {args.queries:,} queries (2 x 41 candidates, 2 x 768-d), same results in every arm:")
    for (cast_name, block_rows, short), (t, _) in arms.items():
        what = "shortlist" if short else "every candidate"
        print(f"  cast {cast_name:<10} block {block_rows:>8} {what:<15}: {args.queries / t:>8,.0f} queries/s  "
              f"{base / t:.2f}x numpy/256/every")
    if args.on_disk:
        on_disk(args, parts, slices, queries, cand, cand_d, first)
    return 0


def pair_casts(self, q: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``IvfIndex.pair_distances_to`` from disk before b12a09b: the same file-order reading, but each
    piece of pairs casts its own query rows and candidate rows (a query's row once per candidate, a
    block's row once per pair it is in)."""
    r, m = ids.shape
    pos = np.asarray(self.positions.take(ids.ravel()))
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    query = np.asarray(rows)[order // m]
    bounds = np.searchsorted(pos, np.arange(0, len(self.vectors) + index.SCAN_ROWS, index.SCAN_ROWS))
    out = np.empty(r * m, dtype=np.float32)

    def chunk(c: int) -> None:
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        base = c * index.SCAN_ROWS
        whole = (hi - lo) * index.SCAN_DENSITY >= index.SCAN_ROWS
        block = self.vectors.rows(base, base + index.SCAN_ROWS) if whole else None
        for s in range(lo, hi, index.SCAN_PAIRS):
            at = slice(s, min(hi, s + index.SCAN_PAIRS))
            v = block[pos[at] - base] if whole else self.vectors.take(pos[at])
            out[order[at]] = index.pair_distances(to_float32(q[query[at]]), to_float32(v)[:, None, :])[:, 0]

    index.run_units(chunk, np.flatnonzero(bounds[1:] > bounds[:-1]).tolist(), "cpu")
    return out.reshape(r, m)


def whole_blocks(block: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``index._touched_rows`` before: every chunk read whole is cast whole, however few rows it is asked for."""
    return index.as_float32(block), local


def on_disk(args, parts, slices, queries, cand, cand_d, expected) -> None:
    from poolsieve.filters.knn.index import IvfIndex

    for j, part in enumerate(parts):
        part.save(args.on_disk / f"part{j}")
    loaded = [IvfIndex.load(args.on_disk / f"part{j}", on_disk=True) for j in range(len(parts))]
    arms = {}
    now = IvfIndex.pair_distances_to
    touched = index._touched_rows
    for name, given, method, cast in (("every candidate, row by row", None, now, touched),
                                      ("shortlist, pairs cast", cand_d, pair_casts, touched),
                                      ("shortlist, blocks cast whole", cand_d, now, whole_blocks),
                                      ("shortlist, asked rows cast", cand_d, now, touched)):
        IvfIndex.pair_distances_to, index._touched_rows = method, cast
        t, out = best_of(args.repeats, lambda g=given: graph.rerank(queries, loaded, slices, cand, 6, cand_d=g))
        assert all(np.array_equal(o, e) for o, e in zip(out, expected, strict=True)), f"{name} differs"
        arms[name] = t
    IvfIndex.pair_distances_to, index._touched_rows = now, touched
    base = arms["every candidate, row by row"]
    print(f"indexes read from disk ({args.on_disk}), same results:")
    for name, t in arms.items():
        print(f"  {name:<28}: {args.queries / t:>8,.0f} queries/s  {base / t:.2f}x row by row")


if __name__ == "__main__":
    raise SystemExit(main())
