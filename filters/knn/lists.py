"""IVF lists: how many, which rows train them, their centroids and each row's nearest lists (on faiss).

The centroids are spherical k-means (``faiss.Clustering`` with ``spherical``: unit centroids, 10
iterations) on a seeded sample of 40 rows per list. By default ``nlist = 2 sqrt(n)`` up to 1M rows, then
``n / 500`` (lists of 500 rows, at most ``MAX_DEFAULT_NLIST``), so that the training sample stays 8% of
the pool. With ``2 sqrt(n)`` lists the sample is ``80 sqrt(n)`` rows, an ever smaller share: on the
4M-row benchmark pool (one topic per 50 rows) 4,000 lists trained on 160k rows, 2 per topic (so about
one topic in seven has none), and D2's calibration needed nprobe 32 against 4 at 1M and 2M (8x the
search). faiss's guide puts nlist at 4-16 sqrt(n) for such pools; ``n / 500`` is 4 sqrt(n) at 4M and 7
sqrt(n) at 12.8M.

Plain L2 k-means leaves a few low-norm centroids that attract every row its own cluster does not cover (measured on the
1M-row benchmark pool: one list of 153k rows, 62x the work of balanced lists); unit centroids keep lists
within 5x of the mean there. A row's nearest lists (squared L2 to the centroids, faiss ``IndexFlatL2``)
are computed once and serve as its own list, its calibration probes and its search probes.
"""

from __future__ import annotations

import math

import numpy as np

from .._kmeans import kmeans, nearest_centroids

MAX_CALIBRATED_NPROBE = 32  # probes computed once per row; calibration beyond this recomputes them


ROWS_PER_LIST = 500  # beyond 1M rows, the default keeps lists this long
CALIBRATION_ROWS = 2000  # nprobe's calibration sample: its recall bound is ~0.006 under its recall at 0.95
MAX_DEFAULT_NLIST = 65_536  # the centroids of both parts stay near 400 MB at 1536-d


def default_nlist(n: int) -> int:
    """``2 sqrt(n)`` lists, or more beyond 1M rows so that a list holds at most ``ROWS_PER_LIST`` rows."""
    return max(1, min(MAX_DEFAULT_NLIST, max(int(round(2 * math.sqrt(n))), -(-n // ROWS_PER_LIST))))


def training_rows(n: int, nlist: int, seed: int, per_list: int = 40) -> np.ndarray:
    """Sorted row ids of the seeded sample the IVF centroids are trained on."""
    size = min(n, nlist * per_list)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def calibration_rows(n: int, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n, count), replace=False))


def train_lists(sample: np.ndarray, nlist: int, seed: int, device: str) -> np.ndarray:
    """Unit centroids of spherical k-means (see the module docstring for why not plain L2)."""
    return kmeans(sample, nlist, niter=10, seed=seed, spherical=True, device=device, desc="IVF lists").centroids


def coarse_probes(q: np.ndarray, centroids: np.ndarray, nprobe: int, device: str,
                  desc: str | None = None) -> np.ndarray:
    """The ``nprobe`` lists nearest to each query (squared L2 to the centroids), nearest first."""
    return nearest_centroids(q, centroids, nprobe, "l2", device, desc)[0]
