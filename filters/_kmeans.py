"""k-means (Lloyd) with a seeded, backend-independent loop; nearest-centroid search on faiss or torch.

The loop (seeded initial sample, centroid means in float64, empty clusters reseeded with the points
farthest from their centroid) runs in numpy; only the nearest-centroid search, where the time goes,
runs on the device: faiss ``IndexFlat`` on CPU, faiss GPU or torch on CUDA. CPU and GPU therefore
agree up to float rounding in that search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from poolsieve.core.errors import ConfigError
from poolsieve.core.progress import Progress

from ._device import faiss_gpu_available, resolve_device

METRICS = ("l2", "ip")
ASSIGN_CHUNK = 65536


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, d) float32
    iterations: int
    inertia: float  # sum of squared distances of the training points to their centroid


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, metric: str = "l2", device: str = "cpu",
                     desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``x``: (index of the nearest centroid, squared L2 distance or inner product).

    ``metric='l2'`` picks the smallest squared L2 distance; ``'ip'`` the largest inner product
    (DataComp's assignment). Rows are processed in chunks; ``desc`` shows progress.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    n = len(x)
    labels = np.empty(n, dtype=np.int64)
    values = np.empty(n, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    progress = Progress(desc, total=n, unit="rows") if desc else None
    search = _searcher(centroids, metric, device)
    for start in range(0, n, ASSIGN_CHUNK):
        chunk = np.ascontiguousarray(x[start:start + ASSIGN_CHUNK], dtype=np.float32)
        lab, val = search(chunk)
        labels[start:start + len(chunk)] = lab
        values[start:start + len(chunk)] = val
        if progress:
            progress.update(len(chunk))
    return labels, values


def _searcher(centroids: np.ndarray, metric: str, device: str):
    if device == "cuda" and not faiss_gpu_available():
        return _torch_searcher(centroids, metric)
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1]) if metric == "l2" else faiss.IndexFlatIP(centroids.shape[1])
    resources = None
    if device == "cuda":
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    index.add(centroids)

    def search(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _ = resources  # the GPU index needs its resources alive
        dist, idx = index.search(chunk, 1)
        return idx[:, 0], dist[:, 0]

    return search


def _torch_searcher(centroids: np.ndarray, metric: str):
    import torch

    c = torch.from_numpy(centroids).cuda()
    c_sq = (c * c).sum(1)

    def search(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            q = torch.from_numpy(chunk).cuda()
            ip = q @ c.T
            if metric == "ip":
                val, idx = ip.max(1)
            else:
                dist = (q * q).sum(1, keepdim=True) + c_sq[None, :] - 2 * ip
                val, idx = dist.min(1)
                val = val.clamp_min(0)
        return idx.cpu().numpy(), val.float().cpu().numpy()

    return search


def kmeans(x: np.ndarray, k: int, *, niter: int = 20, seed: int = 0, spherical: bool = False,
           device: str = "auto", desc: str = "k-means") -> KMeansResult:
    """Lloyd's k-means on the rows of ``x`` (squared L2), ``niter`` iterations or until stable.

    Initial centroids: ``k`` distinct rows drawn with ``numpy.random.default_rng(seed)``.
    ``spherical`` renormalises centroids to unit length after each update (cosine k-means).
    """
    n = len(x)
    if k < 1 or int(k) != k:
        raise ConfigError(f"k-means: number of clusters must be a positive integer, got {k!r}")
    if n < k:
        raise ConfigError(f"k-means: {k} clusters asked for but only {n} rows to cluster")
    if niter < 1:
        raise ConfigError(f"k-means: iterations must be >= 1, got {niter}")
    device = resolve_device(device)
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    centroids = x[np.sort(rng.choice(n, size=k, replace=False))].copy()
    labels = np.full(n, -1, dtype=np.int64)
    progress = Progress(f"{desc} ({n:,} rows, k={k:,})", total=niter, unit="iterations")
    inertia = float("nan")
    it = 0
    for it in range(1, niter + 1):
        new_labels, dist = nearest_centroid(x, centroids, "l2", device)
        inertia = float(dist.astype(np.float64).sum())
        stable = np.array_equal(new_labels, labels)
        labels = new_labels
        if stable:
            progress.update(niter - it + 1)
            break
        centroids = _update_centroids(x, labels, dist, k, spherical)
        progress.update(1)
    return KMeansResult(centroids=centroids, iterations=it, inertia=inertia)


def _update_centroids(x: np.ndarray, labels: np.ndarray, dist: np.ndarray, k: int, spherical: bool) -> np.ndarray:
    """Mean of each cluster (float64 sums); an empty cluster takes the farthest not-yet-used point."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(k))
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    nonempty = counts > 0
    sums[nonempty] = np.add.reduceat(x[order].astype(np.float64), starts[nonempty], axis=0)
    centroids = np.zeros((k, x.shape[1]), dtype=np.float32)
    centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    empty = np.flatnonzero(~nonempty)
    if len(empty):
        farthest = np.argsort(-dist.astype(np.float64), kind="stable")[: len(empty)]
        centroids[empty] = x[farthest]
    if spherical:
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        centroids /= np.maximum(norms, 1e-12)
    return centroids
