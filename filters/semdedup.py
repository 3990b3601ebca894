"""Semantic deduplication (SemDeDup, Abbas et al. 2023): k-means, then near-duplicates within each cluster.

1. k-means (faiss's, spherical by default as SemDeDup's, seeded) on the chosen embeddings (image by default), trained on a
   seeded ``sample_ratio`` of the rows; every row goes to its nearest centroid.
2. Within each cluster the rows are ranked (``order``): ``hard`` = farthest from the centroid first
   (SemDeDup's default ``keep_hard``), ``easy`` = nearest first, ``random`` = seeded shuffle; ties by row.
3. Walking that ranking, a row is dropped when its cosine similarity to an earlier row exceeds
   ``1 - eps``: an earlier *kept* row (``against: kept``, the default: a chain of near-duplicates keeps
   every other link), or any earlier row (``against: any``, the reference's upper-triangle maximum).

| param | default | meaning |
| --- | --- | --- |
| eps | 0.05 | drop when cosine > 1 - eps |
| embedding | l14, else b32 | model key |
| features | image | ``image``, ``text`` or ``image+text`` |
| clusters | max(1, rows // 1000) | k-means clusters |
| iterations | 20 | k-means iterations |
| sample_ratio | 1.0 | share of rows k-means trains on |
| spherical | true | unit-length centroids (cosine k-means) |
| order | hard | ``hard``, ``easy`` or ``random`` |
| against | kept | ``kept`` or ``any`` |
| seed | 0 | centroids, sample, ``random`` order |
| device | auto | ``cuda`` when torch sees a GPU, else ``cpu`` |
"""

from __future__ import annotations

import math

import numpy as np

from poolsieve.core.devices import resolve_device
from poolsieve.core.errors import ConfigError
from poolsieve.core.progress import Progress
from poolsieve.core.uids import UidSet

from ._embeddings import check_features, load_all, pick_embedding_key
from ._kmeans import kmeans, nearest_centroid
from .registry import ScoredPool, register

ORDERS = ("hard", "easy", "random")
AGAINST = ("kept", "any")
BLOCK = 2048


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_ranking(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, order: str, seed: int) -> np.ndarray:
    """Row ids grouped by cluster (ascending), ranked within each cluster by ``order``."""
    n = len(x)
    if order == "random":
        key = np.random.default_rng(seed).permutation(n)
    else:
        cos = np.einsum("ij,ij->i", unit_rows(x), unit_rows(centroids)[labels])
        key = cos if order == "hard" else -cos  # hard: least similar (farthest) first
    return np.lexsort((np.arange(n), key, labels))


def dedup_cluster(e: np.ndarray, threshold: float, against: str) -> np.ndarray:
    """Keep-mask over the ranked unit rows ``e`` of one cluster (see the module docstring)."""
    m = len(e)
    removed = np.zeros(m, dtype=bool)
    kept: list[int] = []
    for b in range(0, m, BLOCK):
        blk = e[b:b + BLOCK]
        earlier = e[kept] if against == "kept" else e[:b]
        if len(earlier):
            removed[b:b + len(blk)] = (blk @ earlier.T).max(axis=1) > threshold
        sims = blk @ blk.T
        for i in range(len(blk)):
            if against == "any":
                if i and sims[i, :i].max() > threshold:
                    removed[b + i] = True
                continue
            if not removed[b + i]:
                kept.append(b + i)
                removed[b + i + 1:b + len(blk)] |= sims[i, i + 1:] > threshold
    return ~removed


def semdedup_keep(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, eps: float, order: str = "hard",
                  against: str = "kept", seed: int = 0) -> np.ndarray:
    """Keep-mask over the rows of ``x`` given their cluster labels."""
    ranking = cluster_ranking(x, labels, centroids, order, seed)
    sorted_labels = labels[ranking]
    bounds = np.flatnonzero(np.diff(sorted_labels)) + 1
    keep = np.zeros(len(x), dtype=bool)
    progress = Progress("SemDeDup clusters", total=len(bounds) + 1, unit="clusters")
    for group in np.split(ranking, bounds):
        keep[group] = dedup_cluster(unit_rows(x[group]), 1.0 - eps, against)
        progress.update(1, len(group), "rows")
    return keep


def semdedup_run(pool: ScoredPool, *, eps: float = 0.05, embedding: str | None = None, features: str = "image",
                 clusters: int | None = None, iterations: int = 20, sample_ratio: float = 1.0,
                 spherical: bool = True, order: str = "hard", against: str = "kept", seed: int = 0,
                 device: str = "auto") -> dict:
    """Run SemDeDup on the pool; returns the kept uids, the labels and the centroids."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 <= eps <= 2:
        raise ConfigError(f"semdedup: eps must be a number in [0, 2], got {eps!r}")
    if order not in ORDERS:
        raise ConfigError(f"semdedup: order must be one of {', '.join(ORDERS)}, got {order!r}")
    if against not in AGAINST:
        raise ConfigError(f"semdedup: against must be one of {', '.join(AGAINST)}, got {against!r}")
    if isinstance(sample_ratio, bool) or not isinstance(sample_ratio, (int, float)) or not 0 < sample_ratio <= 1:
        raise ConfigError(f"semdedup: sample_ratio must be in (0, 1], got {sample_ratio!r}")
    check_features(features)
    device = resolve_device(device)
    key = pick_embedding_key(pool, embedding)
    x = load_all(pool, key, features)
    keys = pool.uid_keys()
    n = len(x)
    if n == 0:
        return {"uids": UidSet(keys), "labels": np.zeros(0, np.int64), "centroids": None, "keep": np.zeros(0, bool)}
    k = clusters or max(1, n // 1000)
    size = n if sample_ratio >= 1 else max(k, int(n * sample_ratio))
    if size > n or k > n:
        raise ConfigError(f"semdedup: {k} clusters need at least {k} rows; the pool has {n}")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else slice(None)
    centroids = kmeans(x[rows], k, niter=iterations, seed=seed, spherical=spherical, device=device,
                       desc="SemDeDup k-means").centroids
    labels, _ = nearest_centroid(x, centroids, "l2", device, desc="SemDeDup assign")
    keep = semdedup_keep(x, labels, centroids, float(eps), order, against, seed)
    return {"uids": UidSet(keys[keep]), "labels": labels, "centroids": centroids, "keep": keep}


@register("semdedup", params=semdedup_run, keeps="eps: a smaller eps drops fewer near-duplicates")
def semdedup(pool: ScoredPool, *, report: dict | None = None, **params) -> UidSet:
    """Semantic deduplication: drop near-duplicates (cosine > 1 - eps) within k-means clusters.

    The parameters are ``semdedup_run``'s (its signature is the one list of them and their defaults)."""
    result = semdedup_run(pool, **params)
    if report is not None and result["centroids"] is not None:
        report.update(clusters=len(result["centroids"]), removed=int((~result["keep"]).sum()))
    return result["uids"]
