"""k-nearest-neighbour graphs over embeddings: exact (blocked GEMM) or IVF-Flat, on CPU or CUDA.

Distances are squared L2 in float32, computed as ``|q|^2 + |v|^2 - 2 q.v`` block by block with a BLAS
GEMM (numpy on CPU, torch on CUDA). An ``IvfIndex`` holds the base vectors (fp16, grouped by inverted
list) with their row ids; the exact index is the same structure with one list. A query probes its
``nprobe`` nearest lists; the queries of a chunk are grouped by list so each list is one GEMM.

``knn_graph`` asks for ``k + 1`` hits and removes each row's own id (by id, never by position; when the
row is not among the hits the farthest hit goes).

IVF lists: spherical k-means (10 iterations, unit centroids) on a seeded sample of 40 rows per list,
``nlist = 2 sqrt(n)`` by default. Plain L2 k-means leaves a few low-norm centroids that attract every row
its own cluster does not cover (measured on the 1M-row benchmark pool: one list of 153k rows, 62x the
work of balanced lists); unit centroids keep lists within 5x of the mean there. Each row's nearest lists
are computed once and serve as its own list, its calibration probes and its search probes.

Features made of several parts (image+text: two embeddings side by side) get one IVF index per part:
a row of a mismatched pair (a dog photo captioned "cheap flights") sits near no cluster of the
concatenation, but near clusters of each part. Each part's index gathers ``candidates`` neighbours by
that part's distance; their union is re-ranked by the exact distance on the whole row.

``nprobe`` (unless given) is the smallest power of two whose recall@k on a seeded sample of rows,
against exact search, meets ``recall``; the candidates per part (unless given) double first while
even probing every list falls short of it. ``sharded_knn_graph`` builds the same graph with Ray: the
indexes are written once to a folder of ``.npy`` files that workers memory-map, each worker searches
the rows of a run of consecutive score tables, and rows are gathered in shard order.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolsieve.core.errors import ConfigError, PoolsieveWarning
from poolsieve.core.progress import Progress

from ._device import resolve_device
from ._kmeans import kmeans

QUERY_CHUNK = 131072
QUERY_BLOCK = 4096
BASE_BLOCK = 16384
METHODS = ("auto", "exact", "ivf")
MAX_CALIBRATED_NPROBE = 32  # probes computed once per row; calibration beyond this recomputes them
RERANK_BLOCK = 512
CANDIDATE_BUDGET = 2**25  # (query, candidate) pairs held per query chunk
SEARCH_TASK_ROWS = 131072  # rows one sharded search task takes on (whole tables)


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


# ------------------------------------------------------------------------------ the index
@dataclass
class IvfIndex:
    """Inverted lists of base vectors. ``offsets[l]:offsets[l+1]`` are list ``l``'s rows."""

    centroids: np.ndarray  # (nlist, d) float32
    offsets: np.ndarray  # (nlist + 1,) int64
    vectors: np.ndarray  # (n, d) float16 or float32, list order (may be a memmap)
    ids: np.ndarray  # (n,) int64 row ids, list order
    sq_norms: np.ndarray  # (n,) float32
    positions: np.ndarray  # (n,) int64: where row id r sits in list order (``ids[positions[r]] == r``)

    FILES = ("centroids", "offsets", "vectors", "ids", "sq_norms", "positions")

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.FILES:
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> IvfIndex:
        mode = "r" if mmap else None
        return cls(**{name: np.load(folder / f"{name}.npy", mmap_mode=mode) for name in cls.FILES})

    def search(self, queries: np.ndarray, k: int, nprobe: int = 1, device: str = "cpu",
               desc: str | None = None, probes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)`` of each query's ``k`` nearest base rows, nearest first (ties: lower id).

        ``probes``: the queries' lists, nearest first, when already known (only the first ``nprobe`` count).
        """
        nq = len(queries)
        dist = np.full((nq, k), np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        progress = Progress(desc, total=nq, unit="queries") if desc else None
        nprobe = max(1, min(nprobe, self.nlist))
        step = max(256, min(QUERY_CHUNK, CANDIDATE_BUDGET // (nprobe * k)))  # bounds the candidate arrays
        for start in range(0, nq, step):
            chunk = np.ascontiguousarray(queries[start:start + step], dtype=np.float32)
            known = None if probes is None else probes[start:start + len(chunk), :nprobe]
            d, i = self._search_chunk(chunk, k, nprobe, device, known)
            dist[start:start + len(chunk)], ids[start:start + len(chunk)] = d, i
            if progress:
                progress.update(len(chunk))
        return dist, ids

    def _search_chunk(self, q: np.ndarray, k: int, nprobe: int, device: str,
                      probes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        nq = len(q)
        if self.nlist == 1:
            probes = np.zeros((nq, 1), dtype=np.int64)
        elif probes is None:
            probes = coarse_probes(q, self.centroids, nprobe, device)
        cand_d = np.full((nq, nprobe * k), np.inf, dtype=np.float32)
        cand_i = np.full((nq, nprobe * k), -1, dtype=np.int64)
        pair_query = np.repeat(np.arange(nq), nprobe)
        pair_slot = np.tile(np.arange(nprobe), nq)
        pair_list = probes.ravel()
        order = np.argsort(pair_list, kind="stable")
        pair_query, pair_slot, pair_list = pair_query[order], pair_slot[order], pair_list[order]
        bounds = np.searchsorted(pair_list, np.arange(self.nlist + 1))
        q_sq = np.einsum("ij,ij->i", q, q)

        def search_list(lst: int) -> None:
            lo, hi = int(self.offsets[lst]), int(self.offsets[lst + 1])
            if hi == lo:
                return
            sel = slice(bounds[lst], bounds[lst + 1])
            qi, slot = pair_query[sel], pair_slot[sel]
            d, i = _list_topk(q[qi], q_sq[qi], self, lo, hi, k, device)
            cols = slot[:, None] * k + np.arange(d.shape[1])[None, :]
            cand_d[qi[:, None], cols] = d  # each (query, slot) belongs to one list: threads never overlap
            cand_i[qi[:, None], cols] = i

        if self.nlist == 1:  # exact: one big list, its base blocks in parallel
            d, i = _list_topk(q, q_sq, self, 0, int(self.offsets[1]), k, device, parallel=True)
            return _sorted_topk(d, i, k)
        _run_lists(search_list, np.flatnonzero(bounds[1:] > bounds[:-1]).tolist(), device)
        return _sorted_topk(cand_d, cand_i, k)


def _run_lists(fn, lists: list[int], device: str) -> None:
    """Run ``fn`` over independent units (lists, query blocks) on a thread per core, each with a
    single-threaded BLAS: one multi-threaded BLAS call per small GEMM spends its time synchronising
    (measured 3-10x slower on a busy 2-core machine)."""
    threads = os.cpu_count() or 1
    if device == "cuda" or threads == 1 or len(lists) < 2:
        for lst in lists:
            fn(lst)
        return
    from concurrent.futures import ThreadPoolExecutor

    with _single_threaded_blas(), ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, lists):
            pass


def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with the scientific stack
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _list_topk(q: np.ndarray, q_sq: np.ndarray, index: IvfIndex, lo: int, hi: int, k: int,
               device: str, parallel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of queries ``q`` within base rows ``lo:hi``, in query blocks x base blocks.

    ``parallel`` spreads the base blocks over threads (for the one big list of an exact search).
    """
    out_d, out_i = [], []
    block_starts = list(range(lo, hi, BASE_BLOCK))
    for qs in range(0, len(q), QUERY_BLOCK):
        qb, qb_sq = q[qs:qs + QUERY_BLOCK], q_sq[qs:qs + QUERY_BLOCK]
        parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def search_block(bs: int, qb=qb, qb_sq=qb_sq, parts=parts) -> None:
            be = min(hi, bs + BASE_BLOCK)
            d, local = block_topk(qb, qb_sq, as_float32(index.vectors[bs:be]), np.asarray(index.sq_norms[bs:be]),
                                  k, device)
            parts[bs] = (d, np.asarray(index.ids[bs:be])[local])

        if parallel:
            _run_lists(search_block, block_starts, device)
        else:
            for bs in block_starts:
                search_block(bs)
        d = np.concatenate([parts[bs][0] for bs in block_starts], axis=1)
        i = np.concatenate([parts[bs][1] for bs in block_starts], axis=1)
        if d.shape[1] > k:
            d, i = _sorted_topk(d, i, k)
        out_d.append(d)
        out_i.append(i)
    return np.concatenate(out_d), np.concatenate(out_i)


def as_float32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def block_topk(q: np.ndarray, q_sq: np.ndarray, v: np.ndarray, v_sq: np.ndarray, k: int,
               device: str) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 from every query to every base row; the ``min(k, len(v))`` smallest per query (unsorted)."""
    kk = min(k, len(v))
    if device == "cuda":
        import torch

        with torch.no_grad():
            qt, vt = _cuda(q), _cuda(v)
            dist = _cuda(q_sq)[:, None] + _cuda(v_sq)[None, :] - 2 * (qt @ vt.T)
            d, i = torch.topk(dist.clamp_min_(0), kk, dim=1, largest=False)
            return d.cpu().numpy(), i.cpu().numpy()
    dist = q @ v.T
    dist *= -2
    dist += q_sq[:, None]
    dist += v_sq[None, :]
    np.maximum(dist, 0, out=dist)
    if kk < len(v):
        idx = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
    else:
        idx = np.broadcast_to(np.arange(len(v)), dist.shape).copy()
    return np.take_along_axis(dist, idx, axis=1), idx


def _cuda(a: np.ndarray):
    import torch

    return torch.from_numpy(np.require(a, np.float32, ["C", "W"])).cuda()


def _sorted_topk(d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the ``k`` smallest distances, ascending; equal distances ordered by id."""
    if d.shape[1] > 4 * k and len(d):
        # sort only a shortlist: the 2k smallest hold every value <= the k-th smallest unless a row has
        # more than 2k ties there; such rows (exact duplicates) are sorted whole
        width = 2 * k
        short = np.argpartition(d, width - 1, axis=1)[:, :width]
        kth = np.partition(d, k - 1, axis=1)[:, k - 1]
        whole = np.flatnonzero((d <= kth[:, None]).sum(axis=1) > width)
        sd, si = _sorted_topk(np.take_along_axis(d, short, 1), np.take_along_axis(i, short, 1), k)
        if len(whole):
            sd[whole], si[whole] = _sorted_topk_full(d[whole], i[whole], k)
        return sd, si
    return _sorted_topk_full(d, i, k)


def _sorted_topk_full(d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids_key = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((ids_key, d), axis=-1)[:, :k]
    d, i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
    if d.shape[1] < k:
        pad = k - d.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return d, i


def coarse_probes(q: np.ndarray, centroids: np.ndarray, nprobe: int, device: str,
                  desc: str | None = None) -> np.ndarray:
    """The ``nprobe`` lists nearest to each query (squared L2 to the centroids), nearest first."""
    c_sq = np.einsum("ij,ij->i", centroids, centroids).astype(np.float32)
    ids = np.arange(len(centroids), dtype=np.int64)
    nprobe = min(nprobe, len(centroids))
    out = np.empty((len(q), nprobe), dtype=np.int64)
    progress = Progress(desc, total=len(q), unit="rows") if desc else None

    def probe_block(start: int) -> None:
        qb = np.ascontiguousarray(q[start:start + QUERY_BLOCK], dtype=np.float32)
        d, local = block_topk(qb, np.einsum("ij,ij->i", qb, qb), centroids, c_sq, nprobe, device)
        out[start:start + len(qb)] = _sorted_topk(d, ids[local], nprobe)[1]
        if progress:
            progress.update(len(qb))

    _run_lists(probe_block, list(range(0, len(q), QUERY_BLOCK)), device)
    return out


# ------------------------------------------------------------------------- building indexes
def sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared L2 norm of every row in float32, in chunks (no full-size float32 copy)."""
    out = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), QUERY_CHUNK):
        x32 = np.asarray(x[s:s + QUERY_CHUNK], dtype=np.float32)
        out[s:s + len(x32)] = np.einsum("ij,ij->i", x32, x32)
    return out


def flat_index(data: np.ndarray) -> IvfIndex:
    data = np.asarray(data)
    ids = np.arange(len(data), dtype=np.int64)
    return IvfIndex(np.zeros((1, data.shape[1]), np.float32), np.array([0, len(data)], dtype=np.int64),
                    data, ids, sq_norms(data), ids)


def default_nlist(n: int) -> int:
    return max(1, int(round(2 * math.sqrt(n))))


def training_rows(n: int, nlist: int, seed: int, per_list: int = 40) -> np.ndarray:
    """Sorted row ids of the seeded sample the IVF centroids are trained on."""
    size = min(n, nlist * per_list)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def calibration_rows(n: int, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n, count), replace=False))


def train_lists(sample: np.ndarray, nlist: int, seed: int, device: str) -> np.ndarray:
    """Unit centroids of spherical k-means (see the module docstring for why not plain L2)."""
    return kmeans(sample, nlist, niter=10, seed=seed, spherical=True, device=device, desc="IVF lists").centroids


def index_from_labels(data: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> IvfIndex:
    """An IVF index whose list of row ``r`` is ``labels[r]``."""
    order = np.argsort(labels, kind="stable")
    offsets = np.searchsorted(labels[order], np.arange(len(centroids) + 1)).astype(np.int64)
    vectors = np.asarray(data)[order]
    return IvfIndex(centroids, offsets, vectors, order.astype(np.int64), sq_norms(vectors), inverse(order))


def inverse(order: np.ndarray) -> np.ndarray:
    """The inverse permutation: ``out[order[p]] = p``."""
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(len(order), dtype=np.int64)
    return out


# ---------------------------------------------------------------------------- graph building
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
    hits = total = 0
    for a, e in zip(approx, exact, strict=True):
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e))
        total += len(e)
    return hits / max(total, 1)


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
    """Hits each part's index returns (self included): ``k + 1`` for one part, else ``candidates + 1``."""
    if n_parts == 1:
        return k + 1
    if candidates is None:
        candidates = 8 * k
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < k:
        raise ConfigError(f"candidates (per feature part) must be an integer >= k ({k}), got {candidates!r}")
    return candidates + 1


def search_parts(queries: np.ndarray, indexes: Sequence[IvfIndex], slices: Sequence[slice], k1: int, m1: int,
                 nprobe: int, device: str, probes: Sequence[np.ndarray | None] | None = None,
                 desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``k1`` nearest rows of each query over all parts: each part's ``m1`` candidates, re-ranked exactly."""
    probes = probes or [None] * len(indexes)
    cand_d, cand_i = [], []
    for j, (index, sl, pr) in enumerate(zip(indexes, slices, probes, strict=True)):
        known = pr if pr is not None and nprobe <= pr.shape[1] else None
        part_desc = None if desc is None else (desc if len(indexes) == 1 else f"{desc}, part {j + 1}/{len(indexes)}")
        d, i = index.search(queries[:, sl], m1, nprobe, device, desc=part_desc, probes=known)
        cand_d.append(d)
        cand_i.append(i)
    if len(indexes) == 1:
        return cand_d[0][:, :k1], cand_i[0][:, :k1]
    return rerank(queries, indexes, slices, cand_d, cand_i, k1, desc=None if desc is None else f"{desc}, re-rank")


def rerank(queries: np.ndarray, indexes: Sequence[IvfIndex], slices: Sequence[slice], cand_d: list[np.ndarray],
           cand_i: list[np.ndarray], k1: int, desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k1`` nearest of each query's candidates by the distance over all parts.

    ``cand_d[j]`` / ``cand_i[j]``: part ``j``'s hits and their part-``j`` distances. The other parts'
    distances of each candidate are computed from the indexes' stored vectors; a row found by several
    parts counts once.
    """
    n, m1 = len(queries), cand_i[0].shape[1]
    out_d = np.empty((n, k1), dtype=np.float32)
    out_i = np.empty((n, k1), dtype=np.int64)
    progress = Progress(desc, total=n, unit="queries") if desc else None
    lock = threading.Lock()

    def rerank_block(start: int) -> None:
        stop = min(n, start + RERANK_BLOCK)
        ids = np.concatenate([c[start:stop] for c in cand_i], axis=1)
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        dist = np.zeros(ids.shape, dtype=np.float32)
        for j, (index, sl) in enumerate(zip(indexes, slices, strict=True)):
            own = np.zeros(ids.shape[1], dtype=bool)
            own[j * m1:(j + 1) * m1] = True
            dist[:, own] += cand_d[j][start:stop]
            q = as_float32(queries[start:stop, sl])
            pos = np.asarray(index.positions[safe[:, ~own].ravel()]).reshape(len(q), -1)
            v = as_float32(index.vectors[pos.ravel()]).reshape(*pos.shape, -1)
            dot = np.matmul(v, q[:, :, None])[..., 0]
            v_sq = np.asarray(index.sq_norms[pos.ravel()]).reshape(pos.shape)
            dist[:, ~own] += np.maximum(np.einsum("ij,ij->i", q, q)[:, None] + v_sq - 2 * dot, 0)
        order = np.argsort(ids, axis=1, kind="stable")
        sorted_ids = np.take_along_axis(ids, order, axis=1)
        dup = np.zeros(ids.shape, dtype=bool)
        np.put_along_axis(dup, order[:, 1:], sorted_ids[:, 1:] == sorted_ids[:, :-1], axis=1)
        drop = dup | ~valid
        dist[drop] = np.inf
        ids = np.where(drop, -1, ids)
        out_d[start:stop], out_i[start:stop] = _sorted_topk(dist, ids, k1)
        if progress:
            with lock:
                progress.update(stop - start)

    _run_lists(rerank_block, list(range(0, n, RERANK_BLOCK)), "cpu")
    return out_d, out_i


def choose_nprobe(search: Callable[[int, int], np.ndarray], exact: np.ndarray, nlist: int, target: float,
                  m1: int, grow_candidates: bool, n: int) -> tuple[int, int, float]:
    """``(nprobe, m1, recall)``: the smallest power-of-two ``nprobe`` whose recall@k reaches ``target``.

    ``search(nprobe, m1)`` returns the calibration rows' neighbour ids (self removed); ``exact`` the
    exact ones. With ``grow_candidates``, the candidates per part (``m1``) double first while even a
    search of every list stays under ``target``.
    """
    if grow_candidates:
        while m1 < n and recall_at_k(search(nlist, m1), exact) < target:
            m1 = min(n, 2 * m1)
    nprobe = 1
    while True:
        recall = recall_at_k(search(nprobe, m1), exact)
        if recall >= target or nprobe >= nlist:
            if recall < target:
                warnings.warn(f"kNN recall@k {recall:.3f} with every one of the {nlist} IVF lists probed is below the "
                              f"target {target}: raise the candidates per part ({m1 - 1}) or use knn=exact",
                              PoolsieveWarning, stacklevel=3)
            return min(nprobe, nlist), m1, recall
        nprobe *= 2


def knn_graph(features: np.ndarray, k: int, *, parts: Sequence[int] | None = None, candidates: int | None = None,
              method: str = "auto", exact_max_rows: int = 50_000, nlist: int | None = None,
              nprobe: int | None = None, recall: float = 0.95, seed: int = 0, device: str = "auto",
              calibration_queries: int = 500) -> KnnGraph:
    """kNN graph of the rows of ``features`` (in one process). See the module docstring.

    ``parts``: widths of the feature parts that get their own IVF index (e.g. ``(768, 768)`` for
    image+text); ``candidates``: hits per part before the exact re-rank (default ``8 k``).
    """
    n = len(features)
    check_knn_params(n, k, method, recall)
    device = resolve_device(device)
    kk = min(k, n - 1)
    query_ids = np.arange(n, dtype=np.int64)
    if use_exact(n, method, exact_max_rows):
        d, i = flat_index(features).search(features, kk + 1, 1, device, desc="exact kNN")
        d, i = remove_self(d, i, query_ids)
        return KnnGraph(*_pad(i, d, k), method="exact")
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
        indexes.append(index_from_labels(part, centroids, pr[:, 0]))
        probes.append(pr)
    measured = None
    if nprobe is None:
        cal = calibration_rows(n, calibration_queries, seed)
        queries = np.asarray(features[cal])
        ed, ei = flat_index(features).search(queries, kk + 1, 1, device, desc="IVF calibration (exact)")
        exact = remove_self(ed, ei, cal)[1]

        def calibration_search(p: int, m: int) -> np.ndarray:
            d, i = search_parts(queries, indexes, slices, kk + 1, m, p, device, [pr[cal] for pr in probes])
            return remove_self(d, i, cal)[1]

        nprobe, m1, measured = choose_nprobe(calibration_search, exact, nlist, recall, m1,
                                             len(slices) > 1 and candidates is None, n)
    d, i = search_parts(features, indexes, slices, kk + 1, m1, nprobe, device, probes,
                        desc=f"IVF kNN (nlist={nlist}, nprobe={nprobe})")
    d, i = remove_self(d, i, query_ids)
    return KnnGraph(*_pad(i, d, k), method="ivf", nlist=nlist, nprobe=nprobe, calibrated_recall=measured,
                    candidates=m1 - 1 if len(slices) > 1 else None)


def _pad(ids: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
    return ids, dist


# ------------------------------------------------------------------------ the sharded build
def sharded_knn_graph(pool, load_features: Callable[[Path], np.ndarray], row_counts: Sequence[int], k: int, *,
                      parts: Sequence[int] | None = None, candidates: int | None = None, method: str = "auto",
                      exact_max_rows: int = 50_000, nlist: int | None = None, nprobe: int | None = None,
                      recall: float = 0.95, seed: int = 0, device: str = "auto", calibration_queries: int = 500,
                      work_dir: Path | None = None) -> KnnGraph:
    """``knn_graph`` over a ScoredPool's tables with ``pool.map`` (Ray tasks), the same result.

    ``load_features(table)`` returns that table's rows (successful samples, in order); ``row_counts``
    their numbers. The indexes go to ``work_dir`` (default: a hidden folder beside the score tables,
    removed at the end); workers memory-map them, so no process holds the whole pool.
    """
    tables = list(pool.tables)
    starts = np.concatenate([[0], np.cumsum(row_counts)]).astype(np.int64)
    n = int(starts[-1])
    check_knn_params(n, k, method, recall)
    device = resolve_device(device)
    kk = min(k, n - 1)
    exact = use_exact(n, method, exact_max_rows)
    dim = int(sum(parts)) if parts else int(load_features(Path(tables[0])).shape[1])
    slices = [slice(0, dim)] if exact else part_slices(dim, parts)
    m1 = min(n, candidates_per_part(kk, len(slices), candidates))
    folder = work_dir or (Path(tables[0]).parent / f".knn-index-{uuid.uuid4().hex[:12]}")
    folder.mkdir(parents=True, exist_ok=True)
    starts_by_table = dict(zip(map(str, tables), starts[:-1].tolist(), strict=True))
    try:
        if exact:
            nlist = 1
            labels = np.zeros((n, 1), dtype=np.int64)
            all_centroids = [np.zeros((1, dim), np.float32)]
        else:
            nlist = nlist or default_nlist(n)
            sample = _gather_rows(pool, load_features, starts, training_rows(n, nlist, seed))
            all_centroids = [train_lists(np.ascontiguousarray(sample[:, sl]), nlist, seed, device) for sl in slices]
            np.save(folder / "centroids.npy", np.stack(all_centroids))
            labels = np.concatenate(pool.map(_AssignLists(load_features, folder, slices, device),
                                             "IVF assign (shards)", **task_resources(device)))
        for j, sl in enumerate(slices):
            _write_index_files(folder / f"part{j}", n, sl.stop - sl.start, all_centroids[j], labels[:, j])
        pool.map(_WriteVectors(load_features, folder, slices, starts_by_table), "write index")
        indexes = [IvfIndex.load(folder / f"part{j}") for j in range(len(slices))]
        measured = None
        if not exact and nprobe is None:
            cal = calibration_rows(n, calibration_queries, seed)
            queries = _gather_rows(pool, load_features, starts, cal)
            exact_ids = remove_self(*sharded_exact_search(pool, load_features, starts, queries, kk + 1, device), cal)[1]

            def calibration_search(p: int, m: int) -> np.ndarray:
                return remove_self(*search_parts(queries, indexes, slices, kk + 1, m, p, device), cal)[1]

            nprobe, m1, measured = choose_nprobe(calibration_search, exact_ids, nlist, recall, m1,
                                                 len(slices) > 1 and candidates is None, n)
        probe = 1 if exact else int(nprobe)
        search = _SearchTables(load_features, folder, slices, starts_by_table, kk + 1, m1, probe, device)
        parts_out = pool.runtime.map(search, table_groups(tables, row_counts, SEARCH_TASK_ROWS),
                                     f"kNN search (k={k}, nprobe={probe})", items=lambda r: len(r[0]),
                                     item_unit="rows", **task_resources(device))
        dist = np.concatenate([p[0] for p in parts_out])
        ids = np.concatenate([p[1] for p in parts_out])
        return KnnGraph(*_pad(ids, dist, k), method="exact" if exact else "ivf", nlist=nlist, nprobe=probe,
                        calibrated_recall=measured, candidates=m1 - 1 if len(slices) > 1 else None)
    finally:
        if work_dir is None:
            shutil.rmtree(folder, ignore_errors=True)


def sharded_exact_search(pool, load_features, starts: np.ndarray, queries: np.ndarray, k: int,
                         device: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest pool rows of ``queries``: each worker searches one table, results merged."""
    parts = pool.map(_ExactAgainstTable(load_features, queries, k, device,
                                        dict(zip(map(str, pool.tables), starts[:-1].tolist(), strict=True))),
                     "exact kNN (calibration)", **task_resources(device))
    return _sorted_topk(np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1), k)


def table_groups(tables: Sequence[Path], row_counts: Sequence[int], min_rows: int) -> list[list[Path]]:
    """Consecutive tables grouped into search tasks of at least ``min_rows`` rows (the last may hold fewer).

    A task converts every index list it probes to float32 once; many queries per task amortise that.
    """
    groups: list[list[Path]] = [[]]
    rows = 0
    for table, count in zip(tables, row_counts, strict=True):
        if rows >= min_rows:
            groups.append([])
            rows = 0
        groups[-1].append(table)
        rows += int(count)
    return [g for g in groups if g]


def task_resources(device: str) -> dict:
    """Ray resources of a task that computes on ``device`` (a whole GPU when it is ``cuda``)."""
    return {"num_gpus": 1} if device == "cuda" else {}


def _gather_rows(pool, load_features, starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted global ids) of the pool's features, fetched table by table on workers."""
    per_table = [rows[(rows >= a) & (rows < b)] - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    wanted = dict(zip(map(str, pool.tables), per_table, strict=True))
    parts = pool.map(_TakeRows(load_features, wanted), "gather rows")
    return np.concatenate(parts)


def _write_index_files(folder: Path, n: int, dim: int, centroids: np.ndarray, labels: np.ndarray) -> None:
    """One part's index folder, vectors still empty (workers fill them in, see ``_WriteVectors``)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.argsort(labels, kind="stable")
    np.save(folder / "centroids.npy", centroids.astype(np.float32))
    np.save(folder / "offsets.npy", np.searchsorted(labels[order], np.arange(len(centroids) + 1)).astype(np.int64))
    np.save(folder / "ids.npy", order.astype(np.int64))
    np.save(folder / "positions.npy", inverse(order))
    np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(n, dim)).flush()
    np.lib.format.open_memmap(folder / "sq_norms.npy", mode="w+", dtype=np.float32, shape=(n,)).flush()


def _TakeRows(load_features, wanted: dict[str, np.ndarray]):  # noqa: N802 - task factories read as nouns
    def take_rows(table: Path) -> np.ndarray:
        return np.asarray(load_features(table)[wanted[str(table)]])

    return take_rows


def _AssignLists(load_features, folder: Path, slices: list[slice], device: str):  # noqa: N802
    def assign_lists(table: Path) -> np.ndarray:
        centroids = np.load(folder / "centroids.npy")
        x = load_features(table)
        return np.stack([coarse_probes(x[:, sl], c, 1, device)[:, 0] for sl, c in zip(slices, centroids, strict=True)],
                        axis=1)

    return assign_lists


def _WriteVectors(load_features, folder: Path, slices: list[slice], starts: dict[str, int]):  # noqa: N802
    def write_vectors(table: Path) -> int:
        x = np.asarray(load_features(table), dtype=np.float16)
        start = starts[str(table)]
        for j, sl in enumerate(slices):
            part = folder / f"part{j}"
            pos = np.load(part / "positions.npy", mmap_mode="r")[start:start + len(x)]
            vectors = np.load(part / "vectors.npy", mmap_mode="r+")
            norms = np.load(part / "sq_norms.npy", mmap_mode="r+")
            vectors[pos] = x[:, sl]
            norms[pos] = sq_norms(x[:, sl])
            vectors.flush()
            norms.flush()
        return len(x)

    return write_vectors


def _ExactAgainstTable(load_features, queries: np.ndarray, k: int, device: str, starts: dict[str, int]):  # noqa: N802
    def exact_against_table(table: Path) -> tuple[np.ndarray, np.ndarray]:
        d, i = flat_index(load_features(table)).search(queries, k, 1, device)
        return d, np.where(i >= 0, i + starts[str(table)], -1)

    return exact_against_table


def _SearchTables(load_features, folder: Path, slices: list[slice], starts: dict[str, int], k1: int, m1: int,  # noqa: N802
                  nprobe: int, device: str):
    def search_tables(tables: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        parts = [load_features(t) for t in tables]
        x = np.concatenate(parts)
        query_ids = np.concatenate([starts[str(t)] + np.arange(len(p), dtype=np.int64)
                                    for t, p in zip(tables, parts, strict=True)])
        indexes = [IvfIndex.load(folder / f"part{j}") for j in range(len(slices))]
        d, i = search_parts(x, indexes, slices, k1, m1, nprobe, device)
        return remove_self(d, i, query_ids)

    return search_tables
