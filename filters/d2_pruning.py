"""D2 Pruning (Maharana et al., ICLR 2024): message passing on a kNN graph, balancing difficulty and diversity.

1. Graph: each row's ``k`` nearest other rows by squared L2 on the chosen features (image, text or
   image+text concatenated), self removed by id. Exact search up to ``exact_max_rows`` rows, else
   IVF-Flat with ``nprobe`` calibrated to reach ``recall`` on a seeded sample; for image+text, one
   IVF index per embedding gathers ``candidates`` rows each, re-ranked by the exact image+text distance.
2. Node score: ``s_i = max(score_i + score_shift, 1e-7)`` of a score column (CLIP score by default,
   shifted positive by the reference's 0.115).
3. Forward message passing: ``g_i = s_i + sum_{j in N(i)} exp(-gamma_forward * d_ij) * s_j``.
4. Greedy selection with reverse message passing: repeatedly take the unselected row with the largest
   ``g`` (ties: lower row), then for each neighbour j of the taken row i:
   ``g_j -= g_i * exp(-gamma_reverse * d_ij)``. A heap with per-row current values, not a rescan.

| param | default | meaning |
| --- | --- | --- |
| fraction / count | 0.3 / - | how many rows to keep: ``int(fraction * n)`` or ``count`` |
| embedding | l14, else b32 | model key of the embeddings (``<key>_img`` / ``<key>_txt``) |
| features | image+text | ``image``, ``text`` or ``image+text`` (concatenated) |
| k | 5 | neighbours per row |
| score_column | ``clip_<key>_similarity_score`` | node difficulty score |
| score_shift | 0.115 | added to the score before clamping at 1e-7 |
| gamma_forward / gamma_reverse | 1.0 / 1.0 | RBF widths of forward / reverse messages |
| knn | auto | ``exact``, ``ivf``, or ``auto`` (exact up to ``exact_max_rows``) |
| knn_impl | auto | IVF index: ``gemm`` (list-major GEMMs, the faster on CPU), ``faiss`` (faiss's IVF); ``auto``: ``faiss`` on a GPU faiss's GPU build sees, else ``gemm`` |
| exact_max_rows | 50000 | largest pool searched exactly under ``auto`` |
| recall | 0.95 | IVF recall@k target that picks ``nprobe`` |
| nlist / nprobe | 2*sqrt(n) / calibrated | IVF lists and lists probed per query |
| candidates | 8*k, grown | image+text IVF: rows each embedding's index proposes for the exact re-rank (doubled while the recall target is out of reach) |
| seed | 0 | IVF training sample and calibration sample |
| device | auto | ``cuda`` when torch sees a GPU, else ``cpu`` |

Selection is over rows; a uid that repeats in the pool appears once in the subset. On a Ray runtime
the graph is built shard by shard on workers against an index written once and
memory-mapped (see ``knn.sharded``); rows are gathered in shard order.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import score_column as score_column_name
from poolsieve.core.progress import Progress
from poolsieve.core.uids import UidSet

from ._embeddings import (
    check_features,
    feature_widths,
    features_loader,
    load_all,
    pick_embedding_key,
    row_counts,
)
from .knn import KnnGraph, knn_graph, sharded_knn_graph
from .registry import ScoredPool, register

EPSILON = 1e-7
REFERENCE_SHIFT = 0.115


def node_scores(scores: np.ndarray, shift: float = REFERENCE_SHIFT) -> np.ndarray:
    return np.maximum(np.asarray(scores, dtype=np.float64) + shift, EPSILON)


def forward_messages(node: np.ndarray, graph: KnnGraph, gamma_forward: float) -> np.ndarray:
    """``g_i = s_i + sum_j exp(-gamma_forward * d_ij) * s_j`` over each row's valid neighbours."""
    valid = graph.neighbors >= 0
    weights = np.where(valid, np.exp(-gamma_forward * graph.distances.astype(np.float64)), 0.0)
    return node + (weights * node[np.where(valid, graph.neighbors, 0)]).sum(axis=1)


def greedy_select(graph_scores: np.ndarray, graph: KnnGraph, n_select: int, gamma_reverse: float,
                  desc: str = "D2 selection") -> np.ndarray:
    """Row ids in the order the greedy reverse-message-passing selection takes them."""
    g = graph_scores.astype(np.float64).tolist()
    weights = np.exp(-gamma_reverse * graph.distances.astype(np.float64)).tolist()
    neighbors = graph.neighbors.tolist()
    selected = bytearray(len(g))
    heap = [(-v, i) for i, v in enumerate(g)]
    heapq.heapify(heap)
    order: list[int] = []
    progress = Progress(desc, total=n_select, unit="rows")
    while len(order) < n_select and heap:
        neg, i = heapq.heappop(heap)
        if selected[i] or -neg != g[i]:
            continue  # taken already, or a stale value
        selected[i] = 1
        order.append(i)
        gi = g[i]
        for j, w in zip(neighbors[i], weights[i], strict=True):
            if j >= 0 and not selected[j]:
                g[j] -= gi * w
                heapq.heappush(heap, (-g[j], j))
        if len(order) % 50_000 == 0:
            progress.update(50_000)
    progress.update(len(order) % 50_000)
    return np.asarray(order, dtype=np.int64)


def selection_size(n: int, fraction: float | None, count: int | None) -> int:
    if fraction is not None and count is not None:
        raise ConfigError("d2_pruning: give fraction or count, not both")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"d2_pruning: count must be a non-negative integer, got {count!r}")
        return min(count, n)
    fraction = 0.3 if fraction is None else fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError(f"d2_pruning: fraction must be a number in [0, 1], got {fraction!r}")
    return int(fraction * n)


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"d2_pruning: {name} must be a non-negative number, got {value!r}")
    return float(value)


def build_graph(pool: ScoredPool, key: str, features: str, k: int, **knn_params) -> KnnGraph:
    """The pool's kNN graph: sharded on Ray workers when the pool's runtime is Ray, else in-process.

    Each embedding of the features is an IVF part (see ``knn``).
    """
    parts = feature_widths(pool, key, features)
    if pool.runtime.executor == "ray":
        return sharded_knn_graph(pool, features_loader(key, features), row_counts(pool), k, parts=parts,
                                 **knn_params)
    return knn_graph(load_all(pool, key, features), k, parts=parts, **knn_params)


@dataclass
class D2Result:
    keys: np.ndarray  # uid keys (``S16``) of the pool's rows, row order
    order: np.ndarray  # row ids in selection order
    graph: KnnGraph | None


def d2_run(pool: ScoredPool, *, fraction: float | None = None, count: int | None = None,
           embedding: str | None = None, features: str = "image+text", k: int = 5,
           score_column: str | None = None, score_shift: float = REFERENCE_SHIFT,
           gamma_forward: float = 1.0, gamma_reverse: float = 1.0, knn: str = "auto",
           exact_max_rows: int = 50_000, recall: float = 0.95, nlist: int | None = None,
           nprobe: int | None = None, candidates: int | None = None, seed: int = 0,
           device: str = "auto", knn_impl: str = "auto") -> D2Result:
    """Run D2 Pruning on the pool: the rows, the greedy selection order, the graph. See the module docstring."""
    check_features(features)
    gamma_forward = _check_positive("gamma_forward", gamma_forward)
    gamma_reverse = _check_positive("gamma_reverse", gamma_reverse)
    key = pick_embedding_key(pool, embedding)
    column = score_column or score_column_name(key)
    df = pool.read_columns([column])
    scores = df[column].to_numpy(dtype=np.float64)
    if np.isnan(scores).any():
        raise InputError(pool.tables[0].parent, f"score column {column} has {int(np.isnan(scores).sum())} missing values")
    n_select = selection_size(len(df), fraction, count)
    keys = pool.uid_keys()
    if n_select == 0 or len(df) < 2:
        return D2Result(keys, np.arange(min(n_select, len(df)), dtype=np.int64), None)
    graph = build_graph(pool, key, features, k, method=knn, exact_max_rows=exact_max_rows, recall=recall,
                        nlist=nlist, nprobe=nprobe, candidates=candidates, seed=seed, device=device, impl=knn_impl)
    graph_scores = forward_messages(node_scores(scores, _shift(score_shift)), graph, gamma_forward)
    return D2Result(keys, greedy_select(graph_scores, graph, n_select, gamma_reverse), graph)


def _shift(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"d2_pruning: score_shift must be a number, got {value!r}")
    return float(value)


@register("d2_pruning", params=d2_run)
def d2_pruning(pool: ScoredPool, *, report: dict | None = None, **params) -> UidSet:
    """D2 Pruning: keep ``fraction`` (or ``count``) rows chosen by graph message passing.

    The parameters are ``d2_run``'s (its signature is the one list of them and their defaults)."""
    result = d2_run(pool, **params)
    if report is not None and result.graph is not None:
        g = result.graph
        report.update(knn=g.method, knn_impl=g.impl, nlist=g.nlist, nprobe=g.nprobe, calibrated_recall=g.calibrated_recall,
                      candidates=g.candidates, selected=len(result.order))
    return UidSet(result.keys[result.order])
