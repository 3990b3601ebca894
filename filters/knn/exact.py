"""Exact nearest neighbours bounded by the GEMM's rounding: a row is scored exactly (``pair_distances``)
only when its GEMM distance can reach a query's ``k``-th nearest so far.

``gemm_margin`` bounds how far a GEMM's distance and ``pair_distances``' can be apart; ``admission_limit``
turns a bound on the ``k``-th nearest distance into the largest GEMM distance that can still be within
it. ``exact_topk`` (the calibration's exact search) and the re-rank's shortlist (``graph._shortlist``)
rely on them.
"""

from __future__ import annotations

import os

import numpy as np

from .._halves import to_float32
from .index import PAIR_BLOCK, pair_distances, run_units

EXACT_ROWS = 16384  # base rows read at once by ``exact_topk`` (a GEMM per core over them)
PAIRS_HELD = PAIR_BLOCK  # floats of admitted rows' differences ``exact_topk`` holds at once per core


def exact_topk(base, ids: np.ndarray, queries: np.ndarray, k: int,
               bound: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``base`` (an array, or anything with ``len`` and ``rows(lo, hi)``; row ids
    ``ids``) of each query, by exact search, nearest first, by ``pair_distances`` (equal ones by id).

    Each block of ``EXACT_ROWS`` is read here and cut into one piece per core, searched on a thread each:
    a GEMM gives every (row, query) distance within ``gemm_margin`` of ``pair_distances``', so a row
    whose GEMM distance exceeds ``admission_limit`` of the query's ``k``-th nearest so far cannot be
    among its ``k`` nearest. Only the rows admitted get their ``pair_distances``, and the result is the
    same however the base is cut into blocks, pieces and tables. ``bound`` (per query: at least the
    distance of its ``k``-th nearest row of the whole pool, e.g. of another table's search) admits only
    rows that can be among the pool's ``k`` nearest: the result is then the rows of ``base`` among them
    (its ``k`` nearest rows within ``bound``, inf and -1 where fewer). Without a bound, a query's first
    piece takes the piece's ``k``-th smallest GEMM distance plus its margin. Admitting rows by that
    bound, not a fixed ``2 k`` candidates per piece by a partial sort of every distance, measures faster
    (``benchmarks/exact_topk.py``): after the first table a query admits a handful of rows."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    q_sq = np.einsum("ij,ij->i", q, q)
    q_norm = np.sqrt(q_sq.astype(np.float64))
    dim = q.shape[1]
    rows = base.rows if hasattr(base, "rows") else (lambda lo, hi: base[lo:hi])
    best_d = np.full((len(q), k), np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    threads = os.cpu_count() or 1
    pairs_at_once = max(1, PAIRS_HELD // max(1, dim))
    for lo in range(0, len(base), EXACT_ROWS):
        block = rows(lo, lo + EXACT_ROWS)  # read in this thread: a reader need not be thread-safe
        piece = -(-len(block) // threads)
        starts = list(range(0, len(block), piece))
        found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        kth = best_d[:, k - 1].astype(np.float64)  # inf until k rows are found
        if bound is not None:
            kth = np.fmin(kth, np.asarray(bound, dtype=np.float64))

        def search_piece(s: int, block=block, lo=lo, piece=piece, found=found, kth=kth) -> None:
            x = to_float32(block[s:s + piece])
            dist = x @ q.T
            dist *= -2
            dist += np.einsum("ij,ij->i", x, x)[:, None]
            dist += q_sq[None, :]
            reach = kth  # per query: at least the distance of the k-th nearest row
            first = np.isinf(kth)
            if first.any() and len(x) >= k:
                gemm_kth = np.partition(dist if first.all() else dist[:, first], k - 1, axis=0)[k - 1]
                gemm_kth = gemm_kth.astype(np.float64)
                reach = kth.copy()
                reach[first] = gemm_kth + gemm_margin(q_norm[first], gemm_kth, dim)
            r, c = np.nonzero(~(dist > _float32_at_least(admission_limit(reach, q_norm, dim))[None, :]))
            del dist
            exact = np.empty(len(r), dtype=np.float32)
            for a in range(0, len(r), pairs_at_once):  # the admitted rows gathered a few at a time
                at = slice(a, a + pairs_at_once)
                exact[at] = pair_distances(q[c[at]], x[r[at]][:, None, :])[:, 0]
            found[s] = (c, exact, ids[lo + s + r])

        run_units(search_piece, starts, "cpu")
        best_d, best_i = _merge_pairs(best_d, best_i, *(np.concatenate([found[s][j] for s in starts])
                                                        for j in range(3)))
    return best_d, best_i


UNIT_ROUNDOFF = 2.0**-24  # float32's unit roundoff


def _gamma(dim: int) -> float:
    d = dim + 3
    return d * UNIT_ROUNDOFF / (1 - d * UNIT_ROUNDOFF)


def gemm_margin(q_norm: np.ndarray, approx: np.ndarray, dim: int) -> np.ndarray:
    """A bound on how far a GEMM's ``|q|^2 + |v|^2 - 2 q.v`` (``approx``, any shape broadcasting with
    ``q_norm``, the queries' norms) and ``pair_distances``' sum of squared differences can be from each
    other: twice the sum of their distances from the true ``D`` (float64).

    Each is within ``gamma (|q| + |v|)^2`` of ``D`` (``gamma = n u / (1 - n u)``, ``n = d + 3``: the
    classic bound for float32 dot products, in any summation order, with the few additions after them).
    ``|v|`` is not needed: from ``|v| <= |q| + sqrt(D)`` and ``D <= approx + gamma (|q| + |v|)^2`` follows
    ``|q| + |v| <= (2 |q| + sqrt(approx)) / (1 - sqrt(gamma))``. It grows with ``approx``."""
    gamma = _gamma(dim)
    s = (2 * q_norm + np.sqrt(np.maximum(np.asarray(approx, dtype=np.float64), 0))) / (1 - np.sqrt(gamma))
    return 4 * gamma * s**2


def admission_limit(bound: np.ndarray, q_norm: np.ndarray, dim: int) -> np.ndarray:
    """Per query, a GEMM distance above which a row's ``pair_distances`` exceeds ``bound`` (inf: none).

    With ``U = 2 bound + 64 gamma |q|^2`` and ``T = bound + gemm_margin(U)``: a GEMM distance ``a`` in
    ``(T, U]`` has ``a - margin(a) >= a - margin(U) > bound``. Beyond ``U``, ``a - margin(a)`` grows: its
    slope ``1 - 4 gamma (2 |q| + sqrt(a)) / (sqrt(a) (1 - sqrt(gamma))^2)`` is at least the value with
    ``a = U``, checked positive. So it stays above ``U - margin(U) >= bound`` when ``T <= U``, checked
    too. Where a check fails (or ``bound`` is not finite) every row is admitted."""
    gamma = _gamma(dim)
    bound = np.asarray(bound, dtype=np.float64)
    upper = 2 * bound + 64 * gamma * q_norm**2 + 1e-30
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        limit = bound + gemm_margin(q_norm, upper, dim)
        slope = 1 - 4 * gamma * (1 + 2 * q_norm / np.sqrt(upper)) / (1 - np.sqrt(gamma)) ** 2
        ok = np.isfinite(limit) & (limit <= upper) & (slope > 0)
    return np.where(ok, limit, np.inf)


def _float32_at_least(x: np.ndarray) -> np.ndarray:
    """``x`` (float64) as the smallest float32 values not below it."""
    y = x.astype(np.float32)
    with np.errstate(invalid="ignore"):
        return np.where(y < x, np.nextafter(y, np.float32(np.inf)), y)


def _merge_pairs(best_d: np.ndarray, best_i: np.ndarray, queries: np.ndarray, dist: np.ndarray,
                 ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest of its current ``best`` and the new (query, distance, id) triples,
    nearest first, equal distances by id (-1, none, last)."""
    nq, k = best_d.shape
    q = np.concatenate([np.repeat(np.arange(nq), k), queries])
    d = np.concatenate([best_d.ravel(), dist])
    i = np.concatenate([best_i.ravel(), ids])
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d, q))
    q, d, i = q[order], d[order], i[order]
    rank = np.arange(len(q)) - np.searchsorted(q, q, side="left")
    keep = rank < k  # every query has its k current entries, so exactly k are kept
    out_d, out_i = np.empty_like(best_d), np.empty_like(best_i)
    out_d[q[keep], rank[keep]] = d[keep]
    out_i[q[keep], rank[keep]] = i[keep]
    return out_d, out_i
