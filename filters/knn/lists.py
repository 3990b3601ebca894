"""IVF lists: how many, which rows train them, their centroids and each row's nearest lists (on faiss).

The centroids are spherical k-means (``faiss.Clustering`` with ``spherical``: unit centroids, 10
iterations) on a seeded sample of 40 rows per list, ``nlist = 2 sqrt(n)`` by default. Plain L2 k-means
leaves a few low-norm centroids that attract every row its own cluster does not cover (measured on the
1M-row benchmark pool: one list of 153k rows, 62x the work of balanced lists); unit centroids keep lists
within 5x of the mean there. A row's nearest lists (squared L2 to the centroids, faiss ``IndexFlatL2``)
are computed once and serve as its own list, its calibration probes and its search probes.
"""

from __future__ import annotations

import math

import numpy as np

from .._kmeans import kmeans, nearest_centroids

MAX_CALIBRATED_NPROBE = 32  # probes computed once per row; calibration beyond this recomputes them


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


def coarse_probes(q: np.ndarray, centroids: np.ndarray, nprobe: int, device: str,
                  desc: str | None = None) -> np.ndarray:
    """The ``nprobe`` lists nearest to each query (squared L2 to the centroids), nearest first."""
    return nearest_centroids(q, centroids, nprobe, "l2", device, desc)[0]
