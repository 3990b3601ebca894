"""Building a kNN graph in one process: exact, or IVF with ``nprobe`` calibrated to a recall target.

``knn_graph`` asks for ``k + 1`` hits and removes each row's own id (by id, never by position; when the
row is not among the hits the farthest hit goes).

Features made of several parts (image+text: two embeddings side by side) get one IVF index per part:
a row of a mismatched pair (a dog photo captioned "cheap flights") sits near no cluster of the
concatenation, but near clusters of each part. Each part's index gathers ``candidates`` neighbours by
that part's distance; their union is re-ranked by the exact distance on the whole row.

The distances kept in the graph are always that re-rank's: each pair's squared L2 summed over its own
dimensions (``index.pair_distances``), never a GEMM's, whose last bits change with the other rows of
its batch and the batch's size. One part's index proposes ``2 (k + 1)`` candidates for it (the GEMM's
rounding can only swap candidates that lie within a few units in the last place of each other). The
graph, distances included, then depends on the rows alone, however they are cut into batches. On the
CPU the exact distance is computed only where it can matter: the search's GEMM already gave each
candidate's distance in its own part, within a rounding bound (``_gemm_margin``), so with the other
parts' exact distances a candidate's total is known within that bound, and those that cannot reach the
``k + 1`` nearest are left out before their own part's exact distance (``_shortlist``; the same result,
about 1.9x faster: ``benchmarks/half_casts.py``).

``nprobe`` (unless given) is the smallest power of two whose recall@k on a seeded sample of rows
(``CALIBRATION_ROWS``), against exact search, meets ``recall`` with 95% confidence (``recall_bound``);
the candidates per part (unless given) double first while even probing every list falls short of it.

``impl`` picks the IVF index: ``gemm`` (``index.IvfIndex``, list-major GEMMs; the faster on CPU) or
``faiss`` (``faiss_index.FaissIvf``); ``auto`` is ``faiss`` on a GPU that faiss's GPU build sees, else
``gemm``. Both use the same lists, probes and re-rank, so they find the same candidates.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from poolsieve.core.devices import resolve_device
from poolsieve.core.errors import ConfigError, PoolsieveWarning
from poolsieve.core.progress import Progress

from .._device import faiss_gpu_available
from .._topk import sorted_topk
from .exact import UNIT_ROUNDOFF, exact_topk, gemm_margin
from .faiss_index import FaissIvf
from .index import IvfIndex, as_float32, flat_index, index_from_labels, pair_distances, run_units
from .lists import (
    CALIBRATION_ROWS,
    MAX_CALIBRATED_NPROBE,
    calibration_rows,
    coarse_probes,
    default_nlist,
    train_lists,
    training_rows,
)

METHODS = ("auto", "exact", "ivf")
IMPLS = ("auto", "gemm", "faiss")
SCAN_QUERIES = 65536  # queries re-ranked at once against indexes read from disk
CONFIDENCE_Z = 1.645  # one-sided 95%: the calibration's recall bound
RERANK_BLOCK = 32  # queries per re-rank block: small enough that its float32 candidates stay in cache


@dataclass
class KnnGraph:
    """Row ``i``'s ``k`` nearest other rows (global row ids, -1 when missing) and squared L2 distances."""

    neighbors: np.ndarray  # (n, k) int64, nearest first
    distances: np.ndarray  # (n, k) float32, inf where missing
    method: str
    nlist: int = 1
    nprobe: int = 1
    calibrated_recall: float | None = None
    candidates: int | None = None  # rows each part's index proposed (several parts only)
    impl: str = "gemm"


def resolve_impl(impl: str, device: str) -> str:
    """``auto`` -> ``faiss`` on a GPU faiss can use, else ``gemm``."""
    if impl not in IMPLS:
        raise ConfigError(f"knn_impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "auto":
        return "faiss" if device == "cuda" and faiss_gpu_available() else "gemm"
    return impl


def build_index(impl: str, part: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> IvfIndex | FaissIvf:
    """One part's IVF index whose list of row ``r`` is ``labels[r]``."""
    if impl == "faiss":
        return FaissIvf.build(part, centroids, labels)
    return index_from_labels(part, centroids, labels)


def remove_self(dist: np.ndarray, ids: np.ndarray, query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop each row's own id from its ``k + 1`` hits; where it is absent, drop the farthest hit."""
    is_self = ids == query_ids[:, None]
    absent = ~is_self.any(axis=1)
    is_self[absent, -1] = True
    keep = ~is_self
    k = ids.shape[1] - 1
    return dist[keep].reshape(-1, k), ids[keep].reshape(-1, k)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row's exact neighbours (ids >= 0) found by the approximate search."""
    hits, totals = _hits(approx, exact)
    return int(hits.sum()) / max(int(totals.sum()), 1)


def _hits(approx: np.ndarray, exact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many of its exact neighbours the approximate search found, and how many it has."""
    hits = np.zeros(len(exact), dtype=np.int64)
    totals = np.zeros(len(exact), dtype=np.int64)
    for r, (a, e) in enumerate(zip(approx, exact, strict=True)):
        e = e[e >= 0]
        hits[r] = len(np.intersect1d(a[a >= 0], e))
        totals[r] = len(e)
    return hits, totals


def recall_bound(approx: np.ndarray, exact: np.ndarray, n: int, z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """``(recall@k, its lower confidence bound)`` on calibration rows drawn without replacement from ``n``.

    The bound is ``recall - z * se``, ``se`` the ratio estimator's standard error over the rows (rows, not
    neighbour slots, are the sample: a row's neighbours are found or missed together), with the
    finite-population correction: calibrating on every row of the pool leaves no sampling error."""
    hits, totals = _hits(approx, exact)
    m, total = len(hits), int(totals.sum())
    recall = int(hits.sum()) / max(total, 1)
    if m < 2 or total == 0:
        return recall, recall
    spread = float(np.sum((hits - recall * totals) ** 2)) / (m - 1)
    se = np.sqrt(max(0.0, 1 - m / max(n, m)) * spread / m) / (total / m)
    return recall, recall - z * float(se)


def check_knn_params(n: int, k: int, method: str, recall: float) -> None:
    if method not in METHODS:
        raise ConfigError(f"knn method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (neighbours) must be a positive integer, got {k!r}")
    if n < 2:
        raise ConfigError(f"a kNN graph needs at least 2 rows, got {n}")
    if not 0 < recall <= 1:
        raise ConfigError(f"recall target must be in (0, 1], got {recall!r}")


def use_exact(n: int, method: str, exact_max_rows: int) -> bool:
    return method == "exact" or (method == "auto" and n <= exact_max_rows)


def part_slices(dim: int, parts: Sequence[int] | None) -> list[slice]:
    """Column ranges of the feature parts (``parts``: their widths, summing to ``dim``; None: one part)."""
    widths = [dim] if not parts else [int(w) for w in parts]
    if sum(widths) != dim or min(widths) < 1:
        raise ConfigError(f"feature parts {list(widths)} do not add up to the {dim} feature columns")
    ends = np.cumsum(widths).tolist()
    return [slice(e - w, e) for w, e in zip(widths, ends, strict=True)]


def candidates_per_part(k: int, n_parts: int, candidates: int | None) -> int:
    """Hits each part's index returns (self included): ``2 (k + 1)`` for one part (for the re-rank), else
    ``candidates + 1``."""
    if n_parts == 1:
        return 2 * (k + 1)
    if candidates is None:
        candidates = 8 * k
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < k:
        raise ConfigError(f"candidates (per feature part) must be an integer >= k ({k}), got {candidates!r}")
    return candidates + 1


def search_parts(queries: np.ndarray, indexes: Sequence[IvfIndex | FaissIvf], slices: Sequence[slice], k1: int, m1: int,
                 nprobe: int, device: str, probes: Sequence[np.ndarray | None] | None = None,
                 desc: str | None = None, pairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``k1`` nearest rows of each query over all parts: each part's ``m1`` candidates, re-ranked exactly.
    ``pairs`` bounds the (query, candidate) pairs an index search holds at once."""
    probes = probes or [None] * len(indexes)
    cand_d, cand_i = [], []
    for j, (index, sl, pr) in enumerate(zip(indexes, slices, probes, strict=True)):
        known = pr if pr is not None and nprobe <= pr.shape[1] else None
        part_desc = None if desc is None else (desc if len(indexes) == 1 else f"{desc}, part {j + 1}/{len(indexes)}")
        d, i = index.search(queries[:, sl], m1, nprobe, device, desc=part_desc, probes=known, pairs=pairs)
        cand_d.append(d)
        cand_i.append(i)
    bounded = device == "cpu" and all(isinstance(index, IvfIndex) for index in indexes)
    return rerank(queries, indexes, slices, cand_i, k1, desc=None if desc is None else f"{desc}, re-rank",
                  cand_d=cand_d if bounded else None)


def rerank(queries: np.ndarray, indexes: Sequence[IvfIndex | FaissIvf], slices: Sequence[slice],
           cand_i: list[np.ndarray], k1: int, desc: str | None = None,
           cand_d: list[np.ndarray] | None = None, in_order: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k1`` nearest of each query's candidates (``cand_i[j]``: part ``j``'s hits) by the distance over
    all parts, each part's from ``pair_distances`` with the index's stored vectors; a row found by several
    parts counts once; equal distances by id.

    ``cand_d`` (the distances each part's CPU search gave its own candidates, a GEMM's) lets the exact
    distance be computed only where it can matter (``_shortlist``): the result is the same. The indexes
    then give their vectors in their own order, for many queries at once, each block cast once
    (``IvfIndex.pair_distances_to``; in memory too: 1.2x the 32-query blocks, ``benchmarks/half_casts.py``;
    ``in_order=False`` keeps those blocks in memory)."""
    n = len(queries)
    out_d = np.empty((n, k1), dtype=np.float32)
    out_i = np.empty((n, k1), dtype=np.int64)
    progress = Progress(desc, total=n, unit="queries") if desc else None
    lock = threading.Lock()
    q_parts = [queries[:, sl] for sl in slices]
    if in_order is None or cand_d is None:  # with cand_d: CPU indexes of ours, read (and cast) in order
        in_order = cand_d is not None

    def rerank_block(start: int) -> None:
        stop = min(n, start + (SCAN_QUERIES if in_order else RERANK_BLOCK))
        ids = _unique_candidates(np.concatenate([c[start:stop] for c in cand_i], axis=1))
        if in_order:
            def distances(p: int, rows: np.ndarray, pair_ids: np.ndarray) -> np.ndarray:
                return indexes[p].pair_distances_to(q_parts[p][start:stop], rows, pair_ids)
        else:
            q_block = [as_float32(q[start:stop]) for q in q_parts]

            def distances(p: int, rows: np.ndarray, pair_ids: np.ndarray) -> np.ndarray:
                return pair_distances(q_block[p][rows], indexes[p].vectors_of(pair_ids))
        if cand_d is None:
            dist = _exact_sums(len(indexes), ids, distances)
        else:
            dist, ids = _shortlist(q_parts, start, ids, [c[start:stop] for c in cand_d], k1, distances)
        out_d[start:stop], out_i[start:stop] = sorted_topk(dist, ids, k1)
        if progress:
            with lock:
                progress.update(stop - start)

    if in_order:  # each part's vectors are read in order, its chunks spread over threads
        for start in range(0, n, SCAN_QUERIES):
            rerank_block(start)
    else:
        run_units(rerank_block, list(range(0, n, RERANK_BLOCK)), "cpu")
    return out_d, out_i


def _unique_candidates(ids: np.ndarray) -> np.ndarray:
    """``ids`` with every repeat of an id in its row (and every -1) set to -1."""
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    dup = np.zeros(ids.shape, dtype=bool)
    np.put_along_axis(dup, order[:, 1:], sorted_ids[:, 1:] == sorted_ids[:, :-1], axis=1)
    return np.where(dup | (ids < 0), -1, ids)


PartDistances = Callable[[int, np.ndarray, np.ndarray], np.ndarray]  # (part, query rows, ids) -> distances


def _exact_sums(parts: int, ids: np.ndarray, distances: PartDistances) -> np.ndarray:
    """Each candidate's distance over all parts (``pair_distances`` per part, summed in part order); inf
    where ``ids`` is -1."""
    safe = np.where(ids >= 0, ids, 0)
    rows = np.arange(len(ids))
    dist = np.zeros(ids.shape, dtype=np.float32)
    for p in range(parts):
        dist += distances(p, rows, safe)
    dist[ids < 0] = np.inf
    return dist


def _shortlist(q_parts: list[np.ndarray], start: int, ids: np.ndarray, own: list[np.ndarray], k1: int,
               distances: PartDistances) -> tuple[np.ndarray, np.ndarray]:
    """``_exact_sums``'s distances where they can reach the ``k1`` nearest, inf and id -1 elsewhere.

    Column block ``j`` of ``ids`` holds part ``j``'s candidates, whose part-``j`` distance ``own[j]`` the
    search's GEMM gave. The other parts' distances are computed exactly (``pair_distances``), so each
    candidate's total is known up to the GEMM's rounding, bounded by ``_gemm_margin``. A candidate whose
    lowest possible total exceeds the ``k1``-th smallest highest possible total cannot be among the
    ``k1`` nearest; only the rest get their own part's exact distance. NaN bounds keep a candidate.
    ``q_parts[p][start + r]`` is query row ``r``'s part ``p``."""
    parts, (b, width) = len(q_parts), ids.shape
    m1 = width // parts
    src = np.repeat(np.arange(parts), m1)  # the part whose index proposed each column
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    every_row = np.arange(b)
    exact = np.zeros((parts, b, width), dtype=np.float32)  # part p's pair distance, where p is not the column's
    for p in range(parts):
        cols = src != p
        if cols.any():
            exact[p][:, cols] = distances(p, every_row, safe[:, cols])
    approx = np.zeros((b, width), dtype=np.float32)
    margin = np.zeros((b, width), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for p in range(parts):
            cols = src == p
            approx += np.where(cols, 0, exact[p])
            approx[:, cols] += own[p]
            margin[:, cols] = _gemm_margin(q_parts[p][start:start + b], own[p])
        margin += np.float32(4 * parts * UNIT_ROUNDOFF) * (np.abs(approx) + margin)
        high = np.where(valid, approx + margin, np.inf)
        cut = np.partition(high, k1 - 1, axis=1)[:, k1 - 1:k1] if width >= k1 else np.full((b, 1), np.inf, np.float32)
        keep = valid & ~(approx - margin > cut)
    rows, cols = np.nonzero(keep)
    dist = np.full((b, width), np.inf, dtype=np.float32)
    total = np.zeros(len(rows), dtype=np.float32)
    for p in range(parts):
        mine = src[cols] == p
        part = exact[p][rows, cols]
        if mine.any():
            r, c = rows[mine], cols[mine]
            part[mine] = distances(p, r, ids[r, c][:, None])[:, 0]
        total += part
    dist[rows, cols] = total
    return dist, np.where(keep, ids, -1)


def _gemm_margin(q: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """``exact.gemm_margin`` for queries ``q`` (b, d) and their candidates' GEMM distances ``approx`` (b, m)."""
    q32 = as_float32(q)
    q_norm = np.sqrt(np.einsum("ij,ij->i", q32, q32, dtype=np.float64))[:, None]
    return gemm_margin(q_norm, approx, q.shape[1]).astype(np.float32)


def choose_nprobe(search: Callable[[int, int], np.ndarray], exact: np.ndarray, nlist: int, target: float,
                  m1: int, grow_candidates: bool, n: int) -> tuple[int, int, float]:
    """``(nprobe, m1, recall)``: the smallest power-of-two ``nprobe`` whose recall@k on the calibration
    rows reaches ``target`` with 95% confidence (``recall_bound``'s lower bound), and that recall.

    ``search(nprobe, m1)`` returns the calibration rows' neighbour ids (self removed); ``exact`` the
    exact ones; ``n`` the rows of the pool they were drawn from. With ``grow_candidates``, when even a
    search of every list stays under ``target``, the candidates per part (``m1``) double and the probes
    start again from one. Every list is searched only then: at 4M rows (8,000 lists) that search held
    1.4 GiB for the calibration's rows alone.
    Requiring the bound, not the sample's own recall, keeps the pool's recall at the target: the first
    ``nprobe`` whose recall on 500 rows passed fell short on the pool at 2M and 4M rows (0.958 and 0.951
    calibrated, 0.948 and 0.935 on 1,000 other rows).
    """
    while True:
        nprobe = 1
        while True:
            recall, bound = recall_bound(search(min(nprobe, nlist), m1), exact, n)
            if bound >= target:
                return min(nprobe, nlist), m1, recall
            if nprobe >= nlist:
                break
            nprobe *= 2
        if not grow_candidates or m1 >= n:
            warnings.warn(f"kNN recall@k {recall:.3f} (at least {bound:.3f} with 95% confidence) with every one "
                          f"of the {nlist} IVF lists probed is below the target {target}: raise the candidates "
                          f"per part ({m1 - 1}) or use knn=exact", PoolsieveWarning, stacklevel=3)
            return nlist, m1, recall
        m1 = min(n, 2 * m1)


def knn_graph(features: np.ndarray, k: int, *, parts: Sequence[int] | None = None, candidates: int | None = None,
              method: str = "auto", exact_max_rows: int = 50_000, nlist: int | None = None,
              nprobe: int | None = None, recall: float = 0.95, seed: int = 0, device: str = "auto",
              calibration_queries: int = CALIBRATION_ROWS, impl: str = "auto") -> KnnGraph:
    """kNN graph of the rows of ``features`` (in one process). See the module docstring.

    ``parts``: widths of the feature parts that get their own IVF index (e.g. ``(768, 768)`` for
    image+text); ``candidates``: hits per part before the exact re-rank (default ``8 k``).
    """
    n = len(features)
    check_knn_params(n, k, method, recall)
    device = resolve_device(device)
    impl = resolve_impl(impl, device)
    kk = min(k, n - 1)
    query_ids = np.arange(n, dtype=np.int64)
    if use_exact(n, method, exact_max_rows):
        m1 = min(n, candidates_per_part(kk, 1, None))
        d, i = search_parts(features, [flat_index(features)], [slice(0, features.shape[1])], kk + 1, m1, 1, device,
                            desc="exact kNN")
        d, i = remove_self(d, i, query_ids)
        return KnnGraph(*_pad(i, d, k), method="exact", impl=impl)
    slices = part_slices(features.shape[1], parts)
    m1 = min(n, candidates_per_part(kk, len(slices), candidates))
    nlist = nlist or default_nlist(n)
    train = training_rows(n, nlist, seed)
    indexes, probes = [], []
    for j, sl in enumerate(slices):
        part = features[:, sl]
        centroids = train_lists(np.asarray(part[train]), nlist, seed, device)
        # every row is both a base row and a query: its nearest lists give its own list and its probes
        pr = coarse_probes(part, centroids, nprobe or MAX_CALIBRATED_NPROBE, device,
                           desc=f"IVF coarse (part {j + 1}/{len(slices)})")
        indexes.append(build_index(impl, part, centroids, pr[:, 0]))
        probes.append(pr)
    measured = None
    if nprobe is None:
        cal = calibration_rows(n, calibration_queries, seed)
        queries = np.asarray(features[cal])
        exact = remove_self(*exact_topk(features, query_ids, queries, kk + 1), cal)[1]

        def calibration_search(p: int, m: int) -> np.ndarray:
            d, i = search_parts(queries, indexes, slices, kk + 1, m, p, device, [pr[cal] for pr in probes])
            return remove_self(d, i, cal)[1]

        nprobe, m1, measured = choose_nprobe(calibration_search, exact, nlist, recall, m1,
                                             len(slices) > 1 and candidates is None, n)
    d, i = search_parts(features, indexes, slices, kk + 1, m1, nprobe, device, probes,
                        desc=f"IVF kNN (nlist={nlist}, nprobe={nprobe})")
    d, i = remove_self(d, i, query_ids)
    return KnnGraph(*_pad(i, d, k), method="ivf", nlist=nlist, nprobe=nprobe, calibrated_recall=measured,
                    candidates=m1 - 1 if len(slices) > 1 else None, impl=impl)


def _pad(ids: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
    return ids, dist

