"""``semdedup``'s ``eps: auto``: a near-duplicate distance calibrated on the pool's own embeddings.

A fixed ``eps`` depends on the model: ``eps: 0.05`` (cosine > 0.95) kept 0.9% of a user's pool scored by a
small self-trained CLIP, whose embeddings all sit within a few hundredths of each other. ``auto``
measures how far apart the pool's rows usually are instead: for ``QUERIES`` rows of the k-means sample
(chosen by a seeded hash of their content, so the choice does not depend on row order), the distance
``1 - cos`` to the nearest other sample row of the same k-means cluster (the rows SemDeDup compares).
Rows at distance 0 (identical embeddings) are left out; ``eps`` is ``EPS_SHARE`` (0.1) times the median
of the others, and at least ``EPS_FLOOR`` (so identical embeddings are always duplicates). A row is then
dropped only when an earlier row is ten times closer to it than a typical row's nearest neighbour: an
outlier against the pool's own distribution, however well or badly the model tells images apart. A
k-means sample cut to fit the memory budget (SemDeDup warns) has sparser neighbours, so ``eps`` comes out
larger than on the whole pool.
"""

from __future__ import annotations

import numpy as np

from poolsieve.core.errors import ConfigError

AUTO = "auto"
EPS_SHARE = 0.1
EPS_FLOOR = 1e-5
QUERIES = 10_000
SIMS_PER_BLOCK = 2**24  # (query, cluster row) similarities held at once
SAME = 1e-6  # a nearest neighbour closer than this is the same embedding (left out of the median)


def content_rows(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of ``count`` rows of ``x`` chosen by a seeded hash of each row's float32 bytes (sorted)."""
    if count >= len(x):
        return np.arange(len(x))
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    weights = np.random.default_rng(seed).integers(1, 2**31, size=bits.shape[1], dtype=np.uint64) | np.uint64(1)
    keys = (bits * weights).sum(axis=1, dtype=np.uint64) & np.uint64(0xFFFFFFFFFFFF)
    order = np.lexsort((np.arange(len(x)), keys))  # equal keys: identical rows, which measure the same
    return np.sort(order[:count])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_distances(x: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each row of ``queries``: ``1 - cos`` to the nearest other row of ``x`` with the same label (inf
    when its cluster has no other row)."""
    out = np.full(len(queries), np.inf, dtype=np.float64)
    by_label = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[by_label], labels[queries], side="left")
    ends = np.searchsorted(labels[by_label], labels[queries], side="right")
    for label in np.unique(labels[queries]):
        mine = np.flatnonzero(labels[queries] == label)
        members = by_label[starts[mine[0]]:ends[mine[0]]]
        if len(members) < 2:
            continue
        rows = _unit(x[members])
        block = max(1, SIMS_PER_BLOCK // len(members))
        for lo in range(0, len(mine), block):
            part = mine[lo:lo + block]
            sims = _unit(x[queries[part]]) @ rows.T
            sims[members[None, :] == queries[part][:, None]] = -np.inf  # not itself
            out[part] = 1.0 - sims.max(axis=1).astype(np.float64)
    return out


def auto_eps(sample: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, str]:
    """``eps`` calibrated on the k-means ``sample`` and its cluster ``labels`` (module docstring), and the
    rule in words."""
    queries = content_rows(sample, QUERIES, seed)
    d = nearest_distances(sample, labels, queries)
    d = d[np.isfinite(d) & (d > SAME)]
    if not len(d):
        return EPS_FLOOR, f"eps {EPS_FLOOR:g}: no two sampled rows of a cluster differ (the floor)"
    median = float(np.median(d))
    eps = max(EPS_SHARE * median, EPS_FLOOR)
    return eps, (f"eps {eps:.3g} = {EPS_SHARE:g} x the median distance {median:.3g} of {len(d):,} sampled rows "
                 "to their nearest neighbour")


def check_eps(eps: object, filter_name: str) -> None:
    """One-line ``ConfigError`` unless ``eps`` is ``auto`` or a number in [0, 2]."""
    if eps == AUTO:
        return
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps) or not 0 <= eps <= 2:
        raise ConfigError(f"{filter_name}: eps must be 'auto' or a number in [0, 2], got {eps!r}")
