"""k-means and nearest-centroid search on faiss (``faiss.Clustering``, ``IndexFlatL2`` / ``IndexFlatIP``).

``kmeans`` is faiss's Lloyd k-means, seeded (``seed`` picks the initial centroids, faiss's own sampling),
on every row given (faiss's subsampling to 256 rows per centroid is turned off: callers choose their
sample). ``spherical`` renormalises the centroids to unit length after each update. It runs one faiss
iteration at a time, each starting from the last centroids, so that progress can be shown and the loop
stops once an iteration leaves the centroids unchanged (the assignment is stable: every later
iteration would repeat it, so the result is the one ``niter`` iterations give).

On CPU the result is deterministic (faiss splits the centroid updates over threads by centroid, not by
row). ``device='cuda'`` runs the searches on faiss's GPU build (the ``[gpu]`` extra) when it is
installed and sees a GPU, else on CPU faiss.

``nearest_centroids`` (every row's nearest centroids: the filters' assignments and IVF lists) runs on
the CPU as numpy GEMMs of a block of ``ROW_BLOCK`` rows (padded) against fixed blocks of centroids, equal
distances going to the lower centroid number: a row's result then depends on the row and the centroids
alone. faiss's CPU search does not, nor does a GEMM whose shape follows the rows given (measured with
OpenBLAS: an element's last bits change with the other rows of its batch, and with the count of rows,
which picks the kernel), so a row on the edge of two clusters could change sides with the table it is
stored in. On a
GPU that faiss's GPU build sees, faiss searches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from poolsieve.core.devices import resolve_device
from poolsieve.core.errors import ConfigError
from poolsieve.core.progress import Progress

from ._device import faiss_gpu_available
from ._halves import to_float32
from ._topk import smallest_k, sorted_topk

METRICS = ("l2", "ip")
ASSIGN_CHUNK = 65536  # rows per faiss search (GPU)
ROW_BLOCK = 1024  # rows per GEMM (CPU): always this many, padded
CENTROID_BLOCK = 8192  # centroids per GEMM (CPU)
ARGMIN_MOST = 32  # nearest centroids found by repeated argmin; more by a partition


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, d) float32
    iterations: int
    inertia: float  # sum of squared distances (spherical: inner products) of the rows to their centroid


def flat_index(dim: int, metric: str = "l2", device: str = "cpu"):
    """A faiss exact index (squared L2 or inner product), on the GPU when ``device`` is cuda and faiss can."""
    import faiss

    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    index = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    if device == "cuda" and faiss_gpu_available():
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, metric: str = "l2", device: str = "cpu",
                     desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``x``: (index of the nearest centroid, squared L2 distance or inner product).

    ``metric='l2'`` picks the smallest squared L2 distance; ``'ip'`` the largest inner product
    (DataComp's assignment). Rows are searched in chunks; ``desc`` shows progress.
    """
    labels, values = nearest_centroids(x, centroids, 1, metric, device, desc)
    return labels[:, 0], values[:, 0]


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, count: int, metric: str = "l2", device: str = "cpu",
                      desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` nearest centroids of every row, nearest first (equal: the lower centroid number), with
    their squared L2 distances (or inner products). See the module docstring for why numpy on a CPU."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    count = min(count, len(centroids))
    if device == "cuda" and faiss_gpu_available():
        index = flat_index(centroids.shape[1], metric, device)
        index.add(centroids)
    else:
        index = None
    n = len(x)
    labels = np.empty((n, count), dtype=np.int64)
    values = np.empty((n, count), dtype=np.float32)
    progress = Progress(desc, total=n, unit="rows") if desc else None
    step = ASSIGN_CHUNK if index is not None else ROW_BLOCK
    for start in range(0, n, step):
        chunk = np.ascontiguousarray(to_float32(x[start:start + step]))
        if index is not None:
            values[start:start + len(chunk)], labels[start:start + len(chunk)] = index.search(chunk, count)
        else:
            values[start:start + len(chunk)], labels[start:start + len(chunk)] = _nearest(chunk, centroids, count,
                                                                                          metric)
        if progress:
            progress.update(len(chunk))
    return labels, values


def _nearest(q: np.ndarray, centroids: np.ndarray, count: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_centroids`` of one block of rows on the CPU: one GEMM per fixed block of centroids, the
    rows padded to ``ROW_BLOCK`` so that every GEMM has the same shape (BLAS picks its kernel by shape,
    and kernels round differently)."""
    rows = len(q)
    if rows < ROW_BLOCK:
        q = np.concatenate([q, np.zeros((ROW_BLOCK - rows, q.shape[1]), dtype=q.dtype)])
    best_d = np.full((len(q), 0), np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    q_sq = np.einsum("ij,ij->i", q, q) if metric == "l2" else None
    for lo in range(0, len(centroids), CENTROID_BLOCK):
        c = centroids[lo:lo + CENTROID_BLOCK]
        dist = q @ c.T
        if metric == "l2":
            dist *= -2
            dist += q_sq[:, None]
            dist += np.einsum("ij,ij->i", c, c)[None, :]
        else:
            np.negative(dist, out=dist)  # the largest inner product first
        ids = np.arange(lo, lo + len(c), dtype=np.int64)
        d, pick = _smallest(dist, count, ids)
        best_d = np.concatenate([best_d, d], axis=1)
        best_i = np.concatenate([best_i, ids[pick]], axis=1)
        if best_d.shape[1] > count:
            best_d, best_i = sorted_topk(best_d, best_i, count)
    best_d, best_i = sorted_topk(best_d[:rows], best_i[:rows], count)
    return (best_d if metric == "l2" else -best_d), best_i


def _smallest(dist: np.ndarray, count: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, columns) of each row's ``count`` smallest, equal values by lower column (= lower ``ids``).
    A few are found by repeated ``argmin`` (the first of equal values), faster than a partition."""
    if count > ARGMIN_MOST:
        pick = smallest_k(dist, count, ids)
        return np.take_along_axis(dist, pick, axis=1), pick
    count = min(count, dist.shape[1])
    rows = np.arange(len(dist))
    values = np.empty((len(dist), count), dtype=dist.dtype)
    pick = np.empty((len(dist), count), dtype=np.int64)
    for j in range(count):
        pick[:, j] = dist.argmin(axis=1)
        values[:, j] = dist[rows, pick[:, j]]
        dist[rows, pick[:, j]] = np.inf
    return values, pick


def kmeans(x: np.ndarray, k: int, *, niter: int = 20, seed: int = 0, spherical: bool = False,
           device: str = "auto", desc: str = "k-means") -> KMeansResult:
    """faiss k-means of the rows of ``x`` (squared L2), ``niter`` iterations. See the module docstring."""
    import faiss

    n = len(x)
    if k < 1 or int(k) != k:
        raise ConfigError(f"k-means: number of clusters must be a positive integer, got {k!r}")
    if n < k:
        raise ConfigError(f"k-means: {k} clusters asked for but only {n} rows to cluster")
    if niter < 1:
        raise ConfigError(f"k-means: iterations must be >= 1, got {niter}")
    device = resolve_device(device)
    x = np.ascontiguousarray(x, dtype=np.float32)
    params = faiss.ClusteringParameters()
    params.niter = 1
    params.seed = int(seed)
    params.spherical = bool(spherical)
    params.max_points_per_centroid = max(n // k + 1, 256)  # no subsampling
    params.min_points_per_centroid = 1
    clustering = faiss.Clustering(x.shape[1], int(k), params)
    index = flat_index(x.shape[1], "l2", device)
    progress = Progress(f"{desc} ({n:,} rows, k={k:,})", total=niter, unit="iterations")
    centroids = None
    it = 0
    for it in range(1, niter + 1):
        clustering.train(x, index)  # starts from the centroids the previous call left
        previous, centroids = centroids, faiss.vector_to_array(clustering.centroids).reshape(k, x.shape[1])
        if previous is not None and np.array_equal(previous, centroids):
            progress.update(niter - it + 1)  # the assignment no longer changes: later iterations are no-ops
            break
        progress.update(1)
    stats = clustering.iteration_stats
    inertia = float(stats.at(stats.size() - 1).obj)
    return KMeansResult(centroids=centroids, iterations=it, inertia=inertia)
