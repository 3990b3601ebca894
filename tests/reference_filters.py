"""The embedding filters computed the simple way, as the references the bounded filters must reproduce on
pools that fit in memory: the whole pool in one process, every embedding loaded and concatenated, one
k-means and one assignment over all rows, one heap over all rows (the filters as they ran before memory
was bounded, main at db3945e), on the rows first put in the pool's row order.

The row order (``row_order``) is computed here from its definition, in plain Python integers: rows
sorted by ``key(uid, seed)``, then uid, then pool row, where ``key`` mixes the uid's two 64-bit halves
and the seed with splitmix64's finaliser. Nothing of ``filters/_row_order.py`` is used, so a change to
how the filters order rows shows here as a difference.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np

from poolsieve.core.formats import embedding_keys
from poolsieve.core.uids import UidSet
from poolsieve.filters._embeddings import load_all, pick_embedding_key
from poolsieve.filters._kmeans import kmeans, nearest_centroid
from poolsieve.filters.d2_pruning import node_scores, selection_size
from poolsieve.filters.image_based import _caption_mask, load_target
from poolsieve.filters.knn import knn_graph
from poolsieve.filters.semdedup import dedup_cluster, unit_rows

MASK = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15


# ------------------------------------------------------------------------------------ row order
def splitmix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def order_key(uid: str, seed: int) -> int:
    """The row-order key of a 32-hex-character uid."""
    salt = splitmix((seed + GOLDEN) & MASK)
    return splitmix(splitmix(int(uid[:16], 16) ^ salt) ^ int(uid[16:], 16))


def row_order(uids, seed: int) -> np.ndarray:
    """Positions of ``uids`` (hex strings, in pool order) sorted into the row order of ``seed``."""
    uids = [str(u) for u in uids]
    keys = [order_key(u, seed) for u in uids]
    return np.array(sorted(range(len(uids)), key=lambda r: (keys[r], uids[r], r)), dtype=np.int64)


def pool_order(pool, seed: int) -> np.ndarray:
    """The pool's member rows in the row order of ``seed``."""
    return row_order(pool.read_columns([])["uid"].to_numpy(), seed)


# ----------------------------------------------------------------------------------------- D2
def d2(pool, *, fraction=None, count=None, features="image+text", k=5, score_shift=0.115, gamma_forward=1.0,
       gamma_reverse=1.0, knn="auto", nlist=None, nprobe=None, candidates=None, seed=0, recall=0.95,
       exact_max_rows=50_000) -> tuple[UidSet, np.ndarray, np.ndarray, np.ndarray]:
    """(kept uids, selection order, neighbours, distances) of the in-memory D2, in pool rows."""
    key = pick_embedding_key(pool, None)
    column = f"clip_{key}_similarity_score"
    perm = pool_order(pool, seed)
    scores = pool.read_columns([column])[column].to_numpy(dtype=np.float64)[perm]
    x = load_all(pool, key, features)[perm]
    widths = [x.shape[1] // 2] * 2 if features == "image+text" else [x.shape[1]]
    graph = knn_graph(x, k, parts=widths, candidates=candidates, method=knn, exact_max_rows=exact_max_rows,
                      nlist=nlist, nprobe=nprobe, recall=recall, seed=seed, device="cpu")
    node = node_scores(scores, score_shift)
    valid = graph.neighbors >= 0
    weights = np.where(valid, np.exp(-gamma_forward * graph.distances.astype(np.float64)), 0.0)
    g = node + (weights * node[np.where(valid, graph.neighbors, 0)]).sum(axis=1)
    order = greedy_heap(g, graph.neighbors, graph.distances, selection_size(len(x), fraction, count), gamma_reverse)
    neighbors = np.empty_like(graph.neighbors)
    neighbors[perm] = np.where(valid, perm[np.where(valid, graph.neighbors, 0)], -1)
    distances = np.empty_like(graph.distances)
    distances[perm] = graph.distances
    return UidSet(pool.uid_keys()[perm[order]]), perm[order], neighbors, distances


def greedy_heap(graph_scores: np.ndarray, neighbors: np.ndarray, distances: np.ndarray, n_select: int,
                gamma_reverse: float) -> np.ndarray:
    """The sequential greedy selection with reverse messages, one heap over every row (ties: lower row)."""
    g = graph_scores.astype(np.float64).tolist()
    weights = np.exp(-gamma_reverse * distances.astype(np.float64)).tolist()
    nbrs = neighbors.tolist()
    selected = bytearray(len(g))
    heap = [(-v, i) for i, v in enumerate(g)]
    heapq.heapify(heap)
    order: list[int] = []
    while len(order) < n_select and heap:
        neg, i = heapq.heappop(heap)
        if selected[i] or -neg != g[i]:
            continue
        selected[i] = 1
        order.append(i)
        gi = g[i]
        for j, w in zip(nbrs[i], weights[i], strict=True):
            if j >= 0 and not selected[j]:
                g[j] -= gi * w
                heapq.heappush(heap, (-g[j], j))
    return np.asarray(order, dtype=np.int64)


# ----------------------------------------------------------------------------------- SemDeDup
def semdedup(pool, *, eps=0.05, features="image", clusters=None, iterations=20, sample_ratio=1.0, spherical=True,
             order="hard", against="kept", seed=0) -> UidSet:
    key = pick_embedding_key(pool, None)
    perm = pool_order(pool, seed)
    x = load_all(pool, key, features)[perm]
    n = len(x)
    k = clusters or max(1, n // 1000)
    size = n if sample_ratio >= 1 else max(k, int(n * sample_ratio))
    centroids = kmeans(x[:size], k, niter=iterations, seed=seed, spherical=spherical, device="cpu").centroids
    labels, _ = nearest_centroid(x, centroids, "l2", "cpu")
    if order == "random":
        rank_key = np.zeros(n)
    else:
        cos = np.einsum("ij,ij->i", unit_rows(x), unit_rows(centroids)[labels])
        rank_key = cos if order == "hard" else -cos
    ranking = np.lexsort((np.arange(n), rank_key, labels))
    bounds = np.flatnonzero(np.diff(labels[ranking])) + 1
    keep = np.zeros(n, dtype=bool)
    for group in np.split(ranking, bounds):
        keep[group] = dedup_cluster(unit_rows(x[group]), 1.0 - eps, against)
    return UidSet(pool.uid_keys()[perm][keep])


# -------------------------------------------------------------------------------- exact dedup
def exact_dedup(pool, by=("sha256", "uid")) -> UidSet:
    """Each sha256 group's first row in the row order of seed 0; rows without a sha256 all."""
    df = pool.read_columns(["sha256"] if "sha256" in by else [])
    if "sha256" not in by:
        return UidSet.from_hex(df["uid"].to_numpy())
    keep = np.zeros(len(df), dtype=bool)
    seen: set[str] = set()
    for r in row_order(df["uid"].to_numpy(), 0):
        sha = df["sha256"].iloc[r]
        if sha is None or sha == "":
            keep[r] = True
        elif sha not in seen:
            seen.add(sha)
            keep[r] = True
    return UidSet.from_hex(df["uid"].to_numpy()[keep])


# --------------------------------------------------------------------------------- image_based
def image_based(pool, *, target="target", clusters=None, iterations=20, sample_ratio=1.0, seed=0,
                caption_filter=True, language="en", centroids=None) -> UidSet:
    image_key = embedding_keys(pick_embedding_key(pool, None))[0]
    x = pool.load_embeddings([image_key])[image_key]
    mask = np.concatenate([_caption_mask(Path(t), caption_filter, language) for t in pool.tables])
    passing = x[mask]
    if centroids is None:
        k = clusters or max(1, min(100_000, len(passing) // 10))
        size = len(passing) if sample_ratio >= 1 else max(k, int(len(passing) * sample_ratio))
        first = row_order(pool.read_columns([])["uid"].to_numpy()[mask], seed)[:size]
        centroids = kmeans(passing[first], k, niter=iterations, seed=seed, device="cpu").centroids
    target_ids = np.unique(nearest_centroid(load_target(pool, target, image_key), centroids, "ip", "cpu")[0])
    labels, _ = nearest_centroid(passing, centroids, "ip", "cpu")
    return UidSet(pool.uid_keys()[mask][np.isin(labels, target_ids)])
