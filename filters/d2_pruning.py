"""D2 Pruning (Maharana et al., ICLR 2024): message passing on a kNN graph, balancing difficulty and diversity.

0. Row order: rows are numbered by their rank in the pool's row order of ``seed`` (``_row_order``: a
   seeded hash of the uid), never by where the tables store them; below, "lower row" means that.
1. Graph: each row's ``k`` nearest other rows by squared L2 on the chosen features (image, text or
   image+text concatenated), equal distances by the lower row, self removed by id. Exact search up to ``exact_max_rows`` rows, else
   IVF-Flat with ``nprobe`` calibrated to reach ``recall`` (with 95% confidence) on a seeded sample of
   2,000 rows searched exactly; for image+text, one IVF index per embedding gathers ``candidates``
   rows each, re-ranked by the exact image+text distance.
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
| recall | 0.95 | IVF recall@k target: ``nprobe`` is the smallest power of two whose recall on 2,000 seeded rows reaches it with 95% confidence |
| nlist / nprobe | 2*sqrt(n), lists of at most 500 rows beyond 1M / calibrated | IVF lists and lists probed per query |
| candidates | 8*k, grown | image+text IVF: rows each embedding's index proposes for the exact re-rank (doubled while the recall target is out of reach) |
| seed | 0 | the row order, hence the IVF training sample, the calibration sample and every tie |
| device | auto | ``cuda`` when torch sees a GPU, else ``cpu`` |

| order-sensitive step | decided by (never by where rows are stored) |
| --- | --- |
| which of equally near rows are neighbours; neighbour order | the lower row in the row order of ``seed`` |
| IVF training and calibration samples, in their order | seeded draws of rows of that order |
| IVF list of a row | the lower list number on equal distances (``_kmeans.nearest_centroids``) |
| greedy ties (equal ``g``), hence which of duplicates is kept | the lower row in that order |
| the cut at ``fraction`` / ``count`` | the greedy order |

Selection is over rows; a uid that repeats in the pool appears once in the subset.

Memory is bounded (``--memory-budget``, see ``_budget.py``): the row order is sorted in buckets of a
spill folder of the workspace (``_row_order.rank_rows``), the graph is built table by table into it
(``knn.sharded``), the node scores and forward messages are written there too, and the greedy selection runs in rounds over workers that each hold a range of rows
(``d2_greedy``: the same selection as the sequential heap). On a Ray runtime every table's work is a
task on some node and the selection's workers are actors spread over the nodes; the driver holds
the selection order and the kept uids.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import score_column as score_column_name
from poolsieve.core.uids import UidSet

from ._embeddings import check_features, feature_names, feature_widths, pick_embedding_key, row_counts
from ._row_order import RANKS, rank_rows
from ._spill import DiskArray, spill_folder
from .columns import float_column, member_keys, read_members
from .d2_greedy import forward_messages, greedy_select
from .knn.sharded import GraphFiles, build_graph
from .registry import ScoredPool, register

EPSILON = 1e-7
REFERENCE_SHIFT = 0.115


def node_scores(scores: np.ndarray, shift: float = REFERENCE_SHIFT) -> np.ndarray:
    return np.maximum(np.asarray(scores, dtype=np.float64) + shift, EPSILON)


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


def _shift(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"d2_pruning: score_shift must be a number, got {value!r}")
    return float(value)


@dataclass
class D2Result:
    uids: UidSet  # the kept rows' uids
    order: np.ndarray  # pool rows in selection order
    graph: GraphFiles | None  # how the graph was built (its files are gone once the run ends)
    neighbors: np.ndarray | None = None  # the neighbours (pool rows) of the rows asked for (``graph_rows``)
    distances: np.ndarray | None = None


def d2_run(pool: ScoredPool, *, fraction: float | None = None, count: int | None = None,
           embedding: str | None = None, features: str = "image+text", k: int = 5,
           score_column: str | None = None, score_shift: float = REFERENCE_SHIFT,
           gamma_forward: float = 1.0, gamma_reverse: float = 1.0, knn: str = "auto",
           exact_max_rows: int = 50_000, recall: float = 0.95, nlist: int | None = None,
           nprobe: int | None = None, candidates: int | None = None, seed: int = 0,
           device: str = "auto", knn_impl: str = "auto") -> D2Result:
    """Run D2 Pruning on the pool: the kept uids, the selection order, the graph. See the module docstring."""
    params = {name: value for name, value in locals().items() if name != "pool"}
    return d2_select(pool, params)


def d2_select(pool: ScoredPool, params: dict, graph_rows: np.ndarray | None = None) -> D2Result:
    """``d2_run`` with its parameters in ``params``; ``graph_rows`` (pool rows) also returns their neighbours."""
    unknown = sorted(set(params) - set(_D2_PARAMS))
    if unknown:
        raise ConfigError(f"d2_pruning: unknown parameter(s) {', '.join(unknown)}")
    p = {**{k: v.default for k, v in _D2_PARAMS.items()}, **params}
    check_features(p["features"])
    gamma_forward = _check_positive("gamma_forward", p["gamma_forward"])
    gamma_reverse = _check_positive("gamma_reverse", p["gamma_reverse"])
    shift = _shift(p["score_shift"])
    key = pick_embedding_key(pool, p["embedding"])
    column = p["score_column"] or score_column_name(key)
    counts = row_counts(pool)
    n = int(sum(counts))
    n_select = selection_size(n, p["fraction"], p["count"])
    with spill_folder(pool, "d2") as folder:
        if n == 0:
            return D2Result(UidSet(), np.zeros(0, np.int64), None)
        ranks, rows = rank_rows(pool, counts, p["seed"], folder)
        _write_node_scores(pool, folder, counts, column, shift)
        if n_select == 0 or n < 2:
            order = rows.take(np.arange(min(n_select, n), dtype=np.int64))
            return D2Result(kept_uids(pool, counts, order), order, None)
        names = feature_names(key, p["features"])
        graph = build_graph(pool, names, counts, p["k"], folder, parts=feature_widths(pool, key, p["features"]),
                            candidates=p["candidates"], method=p["knn"], exact_max_rows=p["exact_max_rows"],
                            nlist=p["nlist"], nprobe=p["nprobe"], recall=p["recall"], seed=p["seed"],
                            device=p["device"], impl=p["knn_impl"])
        forward_messages(pool, folder, n, gamma_forward)
        order = rows.take(greedy_select(pool, folder, n, n_select, gamma_reverse))
        result = D2Result(kept_uids(pool, counts, order), order, graph)
        if graph_rows is not None:
            ids = ranks.take(np.asarray(graph_rows, dtype=np.int64))
            neighbors = graph.neighbors.take(ids)
            result.neighbors = np.where(neighbors >= 0, rows.take(np.maximum(neighbors, 0)), -1)
            result.distances = graph.distances.take(ids)
        return result


def _write_node_scores(pool: ScoredPool, folder: Path, counts: list[int], column: str, shift: float) -> None:
    """``node_scores.npy``: every row's node score (by rank), written table by table by tasks."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    DiskArray.create(folder / "node_scores.npy", (int(starts[-1]),), np.float64)

    def write(unit: tuple[Path, int]) -> int:
        table, start = unit
        scores = float_column(read_members(table, [column], need="d2_pruning", uid=False), column)
        missing = int(np.isnan(scores).sum())
        if missing:
            raise InputError(table, f"score column {column} has {missing} missing values")
        ranks = DiskArray(folder / RANKS).rows(start, start + len(scores))
        DiskArray(folder / "node_scores.npy").write(ranks, node_scores(scores, shift))
        return len(scores)

    pool.runtime.map(write, [(Path(t), int(s)) for t, s in zip(pool.tables, starts[:-1], strict=True)],
                     "D2 node scores")


def kept_uids(pool: ScoredPool, counts: list[int], rows: np.ndarray) -> UidSet:
    """The uids of pool rows ``rows``, read table by table by tasks."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cut = np.searchsorted(rows, starts)
    units = [(Path(t), rows[cut[i]:cut[i + 1]] - starts[i]) for i, t in enumerate(pool.tables) if cut[i + 1] > cut[i]]

    def uids_of(unit: tuple[Path, np.ndarray]) -> UidSet:
        table, local = unit
        return UidSet(member_keys(read_members(table, []), table)[local])

    return UidSet.union_of(pool.runtime.map(uids_of, units, "D2 kept uids"))


@register("d2_pruning", params=d2_run)
def d2_pruning(pool: ScoredPool, *, report: dict | None = None, **params) -> UidSet:
    """D2 Pruning: keep ``fraction`` (or ``count``) rows chosen by graph message passing.

    The parameters are ``d2_run``'s (its signature is the one list of them and their defaults)."""
    result = d2_run(pool, **params)
    if report is not None and result.graph is not None:
        g = result.graph
        report.update(knn=g.method, knn_impl=g.impl, nlist=g.nlist, nprobe=g.nprobe, calibrated_recall=g.calibrated_recall,
                      candidates=g.candidates, selected=len(result.order))
    return result.uids


_D2_PARAMS = {name: p for name, p in inspect.signature(d2_run).parameters.items() if name != "pool"}
