"""The ``k`` smallest of each row, ties broken by id: the one rule every nearest-neighbour and
nearest-centroid search of the filters follows, so that which of equal candidates is chosen never
depends on where they sit in memory (the order of a list, a block, a table).

``smallest_k`` picks them from one block of distances; ``sorted_topk`` merges candidates into the final,
sorted ``k``. Ids are the pool's row order (``_row_order``) in D2's graph, centroid numbers in a
k-means assignment.
"""

from __future__ import annotations

import numpy as np


def smallest_k(dist: np.ndarray, k: int, ids: np.ndarray) -> np.ndarray:
    """Column indices of each row's ``k`` smallest values (any order among them); where several values
    equal the ``k``-th, the columns of smaller ``ids`` (one per column) are the ones taken."""
    n, m = dist.shape
    if k >= m:
        return np.broadcast_to(np.arange(m), (n, m)).copy()
    idx = np.argpartition(dist, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(dist, idx, axis=1).max(axis=1)
    for r in np.flatnonzero((dist <= kth[:, None]).sum(axis=1) > k):  # equal values left out: rare (duplicates)
        cand = np.flatnonzero(dist[r] <= kth[r])
        idx[r] = cand[np.lexsort((ids[cand], dist[r, cand]))[:k]]
    return idx


def sorted_topk(d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the ``k`` smallest distances, ascending; equal distances ordered by id (-1: none, last)."""
    if d.shape[1] > 4 * k and len(d):
        # sort only a shortlist: the 2k smallest hold every value <= the k-th smallest unless a row has
        # more than 2k ties there; such rows (exact duplicates) are sorted whole
        width = 2 * k
        short = np.argpartition(d, width - 1, axis=1)[:, :width]
        kth = np.partition(d, k - 1, axis=1)[:, k - 1]
        whole = np.flatnonzero((d <= kth[:, None]).sum(axis=1) > width)
        sd, si = sorted_topk(np.take_along_axis(d, short, 1), np.take_along_axis(i, short, 1), k)
        if len(whole):
            sd[whole], si[whole] = sorted_topk_full(d[whole], i[whole], k)
        return sd, si
    return sorted_topk_full(d, i, k)


def sorted_topk_full(d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids_key = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((ids_key, d), axis=-1)[:, :k]
    d, i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
    if d.shape[1] < k:
        pad = k - d.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return d, i
