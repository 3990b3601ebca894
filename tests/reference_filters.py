"""The embedding filters as they ran before memory was bounded (main at db3945e): the whole pool in one
process. Kept here as the reference the bounded filters must reproduce on pools that fit in memory.

Each function takes a ``ScoredPool`` and the filter's parameters and returns the kept uids (and, for
D2, the selection order), computed the old way: every embedding loaded and concatenated, one k-means
and one assignment over all rows, one heap over all rows.
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


# ----------------------------------------------------------------------------------------- D2
def d2(pool, *, fraction=None, count=None, features="image+text", k=5, score_shift=0.115, gamma_forward=1.0,
       gamma_reverse=1.0, knn="auto", nlist=None, nprobe=None, candidates=None, seed=0, recall=0.95,
       exact_max_rows=50_000) -> tuple[UidSet, np.ndarray, np.ndarray, np.ndarray]:
    """(kept uids, selection order, neighbours, distances) of the in-memory D2."""
    key = pick_embedding_key(pool, None)
    column = f"clip_{key}_similarity_score"
    scores = pool.read_columns([column])[column].to_numpy(dtype=np.float64)
    x = load_all(pool, key, features)
    widths = [x.shape[1] // 2] * 2 if features == "image+text" else [x.shape[1]]
    graph = knn_graph(x, k, parts=widths, candidates=candidates, method=knn, exact_max_rows=exact_max_rows,
                      nlist=nlist, nprobe=nprobe, recall=recall, seed=seed, device="cpu")
    node = node_scores(scores, score_shift)
    valid = graph.neighbors >= 0
    weights = np.where(valid, np.exp(-gamma_forward * graph.distances.astype(np.float64)), 0.0)
    g = node + (weights * node[np.where(valid, graph.neighbors, 0)]).sum(axis=1)
    order = greedy_heap(g, graph.neighbors, graph.distances, selection_size(len(x), fraction, count), gamma_reverse)
    return UidSet(pool.uid_keys()[order]), order, graph.neighbors, graph.distances


def greedy_heap(graph_scores: np.ndarray, neighbors: np.ndarray, distances: np.ndarray, n_select: int,
                gamma_reverse: float) -> np.ndarray:
    """The sequential greedy selection with reverse messages, one heap over every row."""
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
    x = load_all(pool, key, features)
    n = len(x)
    k = clusters or max(1, n // 1000)
    size = n if sample_ratio >= 1 else max(k, int(n * sample_ratio))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else slice(None)
    centroids = kmeans(x[rows], k, niter=iterations, seed=seed, spherical=spherical, device="cpu").centroids
    labels, _ = nearest_centroid(x, centroids, "l2", "cpu")
    if order == "random":
        rank_key = np.random.default_rng(seed).permutation(n)
    else:
        cos = np.einsum("ij,ij->i", unit_rows(x), unit_rows(centroids)[labels])
        rank_key = cos if order == "hard" else -cos
    ranking = np.lexsort((np.arange(n), rank_key, labels))
    bounds = np.flatnonzero(np.diff(labels[ranking])) + 1
    keep = np.zeros(n, dtype=bool)
    for group in np.split(ranking, bounds):
        keep[group] = dedup_cluster(unit_rows(x[group]), 1.0 - eps, against)
    return UidSet(pool.uid_keys()[keep])


# -------------------------------------------------------------------------------- exact dedup
def exact_dedup(pool, by=("sha256", "uid")) -> UidSet:
    df = pool.read_columns([c for c in by if c != "uid"])
    keep = np.ones(len(df), dtype=bool)
    if "uid" in by:
        keep &= _first(df["uid"].to_numpy().astype(str))
    if "sha256" in by:
        sha = df["sha256"]
        valid = sha.notna().to_numpy() & (sha.fillna("").astype(str).str.len() > 0).to_numpy()
        keep &= _first(sha.fillna("").astype(str).to_numpy(), valid)
    return UidSet(pool.uid_keys()[keep])


def _first(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    valid = np.ones(len(values), dtype=bool) if valid is None else valid
    keep = np.ones(len(values), dtype=bool)
    idx = np.flatnonzero(valid)
    _, first = np.unique(values[idx], return_index=True)
    keep[idx] = False
    keep[idx[first]] = True
    return keep


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
        chosen = np.sort(np.random.default_rng(seed).choice(len(passing), size, replace=False)) \
            if size < len(passing) else slice(None)
        centroids = kmeans(passing[chosen], k, niter=iterations, seed=seed, device="cpu").centroids
    target_ids = np.unique(nearest_centroid(load_target(pool, target, image_key), centroids, "ip", "cpu")[0])
    labels, _ = nearest_centroid(passing, centroids, "ip", "cpu")
    return UidSet(pool.uid_keys()[mask][np.isin(labels, target_ids)])
