"""The list-major IVF-Flat index: inverted lists searched one list at a time with a BLAS GEMM.

Distances are squared L2 in float32, computed as ``|q|^2 + |v|^2 - 2 q.v`` block by block (numpy on CPU,
torch on CUDA). An ``IvfIndex`` holds the base vectors (fp16, grouped by inverted list) with their row
ids; the exact index is the same structure with one list. A query probes its ``nprobe`` nearest lists;
the queries of a chunk are grouped by list so that each list is one GEMM against all the queries that
probe it.

Why not faiss's ``IndexIVFFlat`` / ``IndexIVFScalarQuantizer`` (``faiss_index.py``): faiss scans the
lists query by query with vector kernels, which on a CPU is bound by memory bandwidth; grouping the
queries by list turns the same work into matrix products, which measure faster with the same lists,
``nprobe`` and recall (``benchmarks/embedding_filters.py --impl both``; the README has the figures). The
lists themselves (centroids, assignment) come from faiss (``lists.py``).

Equal distances are decided by row id wherever candidates are cut (within a block, across blocks and
lists: ``_topk``), so which rows a search returns never depends on where they sit in a list. A query's
distances come from the query and each base row alone: the query side of a GEMM is cut into blocks
freely (measured with numpy's OpenBLAS: an element does not change with the other rows of its query
block), the base side only into fixed blocks of each list.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from poolsieve.core.progress import Progress

from .._halves import to_float32
from .._spill import DiskArray
from .._topk import smallest_k, sorted_topk
from .lists import coarse_probes

QUERY_CHUNK = 131072
QUERY_BLOCK = 4096
BASE_BLOCK = 16384
CANDIDATE_BUDGET = 2**25  # (query, candidate) pairs held per query chunk
PAIR_BLOCK = 2**24  # floats of differences ``pair_distances`` holds at once
SCAN_ROWS = 8192  # rows of an on-disk index read at once by ``pair_distances_to``
SCAN_PAIRS = 512  # pairs computed at once within a chunk
SCAN_DENSITY = 8  # a chunk is read whole when this share of its rows (1 in 8) is asked for


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
    def load(cls, folder: Path, on_disk: bool = True) -> IvfIndex:
        """The index saved in ``folder``; ``on_disk``: the per-row arrays stay there and are read list by
        list as searched (``_spill.DiskArray``: no page stays resident), only centroids and offsets are loaded."""
        small = ("centroids", "offsets")
        return cls(**{name: np.load(folder / f"{name}.npy") if name in small or not on_disk
                      else DiskArray(folder / f"{name}.npy") for name in cls.FILES})

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The float32 vectors of row ids ``ids`` (any shape; a trailing axis is added)."""
        pos = np.asarray(self.positions[ids.ravel()])
        return as_float32(self.vectors[pos]).reshape(*ids.shape, self.vectors.shape[1])

    @property
    def on_disk(self) -> bool:
        """Whether the vectors are read from disk as searched (``load(on_disk=True)``)."""
        return isinstance(self.vectors, DiskArray)

    def pair_distances_to(self, q: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``pair_distances`` from query ``q[rows[i]]`` to row id ``ids[i, j]``'s vector, for every pair.

        The pairs are sorted by where their rows sit and the vectors (on disk or in memory) read in
        chunks of ``SCAN_ROWS``, each either whole (when at least ``1 / SCAN_DENSITY`` of it is asked
        for; its asked-for rows cast to float32 once for all their pairs) or row by row; the chunks are
        spread over threads. From disk, rows read one by one cost a page fault each (about 10 us here,
        against 1 us per row read in order); in memory, the casts saved make it faster too. The values are
        ``pair_distances``' (each pair's own)."""
        r, m = ids.shape
        vectors = self.vectors
        read = vectors.rows if self.on_disk else (lambda lo, hi: vectors[lo:hi])
        take = vectors.take if self.on_disk else (lambda at: vectors[at])
        positions = self.positions.take if self.on_disk else (lambda at: self.positions[at])
        pos = np.asarray(positions(ids.ravel()))  # one mapping of the positions: each page faults once
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        query = np.asarray(rows)[order // m]
        bounds = np.searchsorted(pos, np.arange(0, len(self.vectors) + SCAN_ROWS, SCAN_ROWS))
        out = np.empty(r * m, dtype=np.float32)
        q32 = as_float32(q)  # cast once: each query is in many pairs (the casts are exact, the values the same)

        def chunk(c: int) -> None:
            lo, hi = int(bounds[c]), int(bounds[c + 1])
            base = c * SCAN_ROWS
            whole = (hi - lo) * SCAN_DENSITY >= SCAN_ROWS
            block, at_row = None, None
            if whole:  # read in order; only the rows asked for are cast (all of them when half are)
                block = read(base, base + SCAN_ROWS)
                block, at_row = _touched_rows(block, pos[lo:hi] - base)
            for s in range(lo, hi, SCAN_PAIRS):  # pieces whose float32 copies stay in cache
                at = slice(s, min(hi, s + SCAN_PAIRS))
                v = block[at_row[s - lo:at.stop - lo]] if whole else as_float32(take(pos[at]))
                out[order[at]] = pair_distances(q32[query[at]], v[:, None, :])[:, 0]

        run_units(chunk, np.flatnonzero(bounds[1:] > bounds[:-1]).tolist(), "cpu")
        return out.reshape(r, m)

    def search(self, queries: np.ndarray, k: int, nprobe: int = 1, device: str = "cpu",
               desc: str | None = None, probes: np.ndarray | None = None,
               pairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)`` of each query's ``k`` nearest base rows, nearest first (ties: lower id).

        ``probes``: the queries' lists, nearest first, when already known (only the first ``nprobe`` count).
        ``pairs``: (query, candidate) pairs held at once (default ``CANDIDATE_BUDGET``).
        """
        nq = len(queries)
        dist = np.full((nq, k), np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        progress = Progress(desc, total=nq, unit="queries") if desc else None
        nprobe = max(1, min(nprobe, self.nlist))
        step = max(1, min(QUERY_CHUNK, (pairs or CANDIDATE_BUDGET) // (nprobe * k)))  # bounds the candidate arrays
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
            return sorted_topk(d, i, k)
        run_units(search_list, np.flatnonzero(bounds[1:] > bounds[:-1]).tolist(), device)
        return sorted_topk(cand_d, cand_i, k)


def _touched_rows(block: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``block``'s rows that sorted positions ``local`` ask for, cast to float32, and where each position's
    row is in them. A block at least half asked for is cast whole (no gather); a sparser one only where
    asked (estimated from the pairs per row: at 4M a re-rank block asks for about half of a chunk or
    less, at 12.8M about a fifth)."""
    if len(local) == 0:
        return block[:0].astype(np.float32), local
    first = np.empty(len(local), dtype=bool)
    first[0] = True
    np.not_equal(local[1:], local[:-1], out=first[1:])
    touched = local[first]
    if 2 * len(touched) >= len(block):
        return as_float32(block), local
    return as_float32(block[touched]), np.cumsum(first) - 1


def run_units(fn, lists: list[int], device: str) -> None:
    """Run ``fn`` over independent units (lists, query blocks) on a thread per core, each with a
    single-threaded BLAS: one multi-threaded BLAS call per small GEMM spends its time synchronising."""
    threads = os.cpu_count() or 1
    if device == "cuda" or threads == 1 or len(lists) < 2:
        for lst in lists:
            fn(lst)
        return

    with _single_threaded_blas(), ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, lists):
            pass


def _single_threaded_blas() -> threadpool_limits:
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
            ids = np.asarray(index.ids[bs:be])
            d, local = block_topk(qb, qb_sq, as_float32(index.vectors[bs:be]), np.asarray(index.sq_norms[bs:be]),
                                  k, device, ids)
            parts[bs] = (d, ids[local])

        if parallel:
            run_units(search_block, block_starts, device)
        else:
            for bs in block_starts:
                search_block(bs)
        d = np.concatenate([parts[bs][0] for bs in block_starts], axis=1)
        i = np.concatenate([parts[bs][1] for bs in block_starts], axis=1)
        if d.shape[1] > k:
            d, i = sorted_topk(d, i, k)
        out_d.append(d)
        out_i.append(i)
    return np.concatenate(out_d), np.concatenate(out_i)


def as_float32(a: np.ndarray) -> np.ndarray:
    return to_float32(a)


def block_topk(q: np.ndarray, q_sq: np.ndarray, v: np.ndarray, v_sq: np.ndarray, k: int, device: str,
               ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 from every query to every base row; the ``min(k, len(v))`` smallest per query (unsorted),
    equal distances at the cut taken in order of the base rows' ``ids`` (``_topk.smallest_k``)."""
    kk = min(k, len(v))
    if device == "cuda":
        import torch

        with torch.no_grad():
            qt, vt = _cuda(q), _cuda(v)
            dist = (_cuda(q_sq)[:, None] + _cuda(v_sq)[None, :] - 2 * (qt @ vt.T)).clamp_min_(0)
            d, i = torch.topk(dist, kk, dim=1, largest=False)
            tied = torch.nonzero((dist <= d.max(dim=1).values[:, None]).sum(dim=1) > kk).flatten()
            d, i = d.cpu().numpy(), i.cpu().numpy()
            if len(tied):
                rows = tied.cpu().numpy()
                i[rows] = smallest_k(dist[tied].cpu().numpy(), kk, ids)
                d[rows] = np.take_along_axis(dist[tied].cpu().numpy(), i[rows], axis=1)
            return d, i
    dist = q @ v.T
    dist *= -2
    dist += q_sq[:, None]
    dist += v_sq[None, :]
    np.maximum(dist, 0, out=dist)
    idx = smallest_k(dist, kk, ids)
    return np.take_along_axis(dist, idx, axis=1), idx


def _cuda(a: np.ndarray):
    import torch

    return torch.from_numpy(np.require(a, np.float32, ["C", "W"])).cuda()


def pair_distances(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared L2 from each query ``q[i]`` to each of its rows ``v[i, j]`` (float32), each summed over the
    pair's own dimensions: unlike a GEMM's, the value never depends on the other rows computed with it
    (measured: the same bits in any batch, order or memory alignment)."""
    out = np.empty(v.shape[:2], dtype=np.float32)
    step = max(1, PAIR_BLOCK // max(1, v.shape[1] * v.shape[2]))
    for s in range(0, len(q), step):
        diff = as_float32(v[s:s + step]) - as_float32(q[s:s + step])[:, None, :]
        out[s:s + step] = np.einsum("ijk,ijk->ij", diff, diff)
    return out


def sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared L2 norm of every row in float32, in chunks (no full-size float32 copy)."""
    out = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), QUERY_CHUNK):
        x32 = to_float32(x[s:s + QUERY_CHUNK])
        out[s:s + len(x32)] = np.einsum("ij,ij->i", x32, x32)
    return out


def flat_index(data: np.ndarray) -> IvfIndex:
    data = np.asarray(data)
    ids = np.arange(len(data), dtype=np.int64)
    return IvfIndex(np.zeros((1, data.shape[1]), np.float32), np.array([0, len(data)], dtype=np.int64),
                    data, ids, sq_norms(data), ids)



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

