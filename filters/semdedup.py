"""Semantic deduplication (SemDeDup, Abbas et al. 2023): k-means, then near-duplicates within each cluster.

1. k-means (faiss's, spherical by default as SemDeDup's, seeded) on the chosen embeddings (image by default), trained on
   the first ``sample_ratio`` of the rows in the pool's row order of ``seed`` (``_row_order``: a seeded
   hash of the uid), given in that order; every row goes to its nearest centroid.
2. Within each cluster the rows are ranked (``order``): ``hard`` = farthest from the centroid first
   (SemDeDup's default ``keep_hard``), ``easy`` = nearest first, ``random`` = the row order of ``seed``;
   equal ranks in the row order.
3. Walking that ranking, a row is dropped when its cosine similarity to an earlier row exceeds
   ``1 - eps``: an earlier *kept* row (``against: kept``, the default: a chain of near-duplicates keeps
   every other link), or any earlier row (``against: any``, the reference's upper-triangle maximum).

``eps: auto`` (the default) is calibrated on the pool (``_calibrate.py``): 0.1 times the median distance
``1 - cos`` from a sampled row to its nearest neighbour in its cluster, so a row goes only when an earlier
one is ten times closer to it than a typical row's nearest neighbour, whatever the model. The paper's
fixed ``eps`` (0.05 and up) assumes a large pretrained CLIP: on a pool scored by a small self-trained one
it kept 0.9%. The step's record names the ``eps`` used and how it was found.

| param | default | meaning |
| --- | --- | --- |
| eps | auto | drop when cosine > 1 - eps; ``auto``: calibrated on the pool (above) |
| embedding | l14, else b32 | model key |
| features | image | ``image``, ``text`` or ``image+text`` |
| clusters | rows // 1000 up to 1M rows, then sqrt(rows) | k-means clusters (see below) |
| iterations | 20 | k-means iterations |
| sample_ratio | 1.0 | share of rows k-means trains on |
| spherical | true | unit-length centroids (cosine k-means) |
| order | hard | ``hard``, ``easy`` or ``random`` |
| against | kept | ``kept`` or ``any`` |
| seed | 0 | centroids, sample, ``random`` order (the row order of ``seed``) |
| device | auto | ``cuda`` when torch sees a GPU, else ``cpu`` |

| order-sensitive step | decided by (never by where rows are stored) |
| --- | --- |
| k-means sample and its order (the initial centroids) | the first rows in the row order of ``seed`` |
| which of near-duplicates is kept | the ranking, then the row order of ``seed`` |
| ``order: random`` | the row order of ``seed`` |
| nearest centroid | the lower centroid number on equal distances (``_kmeans.nearest_centroids``) |

Scale. The default cluster count is ``rows // 1000`` up to a million rows and ``sqrt(rows)`` beyond
(DataComp small: 3,578; medium: 11,314; the paper's LAION-440M run used a fixed 50,000), so k-means,
the assignment and the comparisons within clusters each grow as ``rows^1.5`` at most, instead of
k-means growing as ``rows^2`` with ``rows // 1000`` clusters. Memory is bounded by the pool's memory
budget (``_budget.py``): the k-means sample is gathered table by table into one float32 array (a
sample larger than half the budget is cut to its first rows in the row order, with a warning); every table's rows are
assigned by a task that writes them, grouped by cluster, to a spill folder (``_spill.write_groups``);
then runs of whole clusters that fit the budget are deduplicated by a task each, which returns the
kept uids. On a Ray runtime these tasks spread over the nodes; the driver holds the sample, the
centroids and the kept uids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolsieve.core.devices import resolve_device, task_resources
from poolsieve.core.errors import ConfigError
from poolsieve.core.uids import KEY_DTYPE, UidSet

from ._budget import fit_count, rows_within, task_cpus
from ._calibrate import AUTO, auto_eps, check_eps
from ._embeddings import (
    TableEmbeddings,
    check_features,
    feature_names,
    feature_widths_of,
    gather_rows,
    pick_embedding_key,
    row_counts,
)
from ._halves import to_float32
from ._kmeans import kmeans, nearest_centroid
from ._row_order import first_rows, in_order, order_keys
from ._spill import read_groups, spill_folder, write_groups
from .columns import member_keys, read_members
from .registry import ScoredPool, register

ORDERS = ("hard", "easy", "random")
AGAINST = ("kept", "any")
BLOCK = 2048
SAMPLE_SHARE = 0.5  # of the budget for the k-means sample
BUCKET_SHARE = 0.4  # of the budget for one dedup task's rows


def default_clusters(n: int) -> int:
    """``rows // 1000`` up to a million rows, ``sqrt(rows)`` beyond (see the module docstring)."""
    return max(1, min(n // 1000, math.isqrt(n)))


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = to_float32(x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ranking_key(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, order: str) -> np.ndarray:
    """Each row's rank key within its cluster (smaller first): ``hard`` = least similar to the centroid."""
    cos = np.einsum("ij,ij->i", unit_rows(x), unit_rows(centroids)[labels])
    return cos if order == "hard" else -cos


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


def _check(eps, order, against, sample_ratio) -> None:
    check_eps(eps, "semdedup")
    if order not in ORDERS:
        raise ConfigError(f"semdedup: order must be one of {', '.join(ORDERS)}, got {order!r}")
    if against not in AGAINST:
        raise ConfigError(f"semdedup: against must be one of {', '.join(AGAINST)}, got {against!r}")
    if isinstance(sample_ratio, bool) or not isinstance(sample_ratio, (int, float)) or not 0 < sample_ratio <= 1:
        raise ConfigError(f"semdedup: sample_ratio must be in (0, 1], got {sample_ratio!r}")


def semdedup_run(pool: ScoredPool, *, eps: float | str = AUTO, embedding: str | None = None, features: str = "image",
                 clusters: int | None = None, iterations: int = 20, sample_ratio: float = 1.0,
                 spherical: bool = True, order: str = "hard", against: str = "kept", seed: int = 0,
                 device: str = "auto") -> dict:
    """Run SemDeDup on the pool; returns the kept uids, the centroids and counts (see the module docstring)."""
    _check(eps, order, against, sample_ratio)
    check_features(features)
    device = resolve_device(device)
    names = feature_names(pick_embedding_key(pool, embedding), features)
    counts = row_counts(pool)
    n = int(sum(counts))
    if n == 0:
        return {"uids": UidSet(), "centroids": None, "removed": 0, "sample_rows": 0, "eps": eps, "eps_rule": ""}
    k = clusters or default_clusters(n)
    size = n if sample_ratio >= 1 else max(k, int(n * sample_ratio))
    if size > n or k > n:
        raise ConfigError(f"semdedup: {k} clusters need at least {k} rows; the pool has {n}")
    sample = _sample(pool, names, counts, size, k, seed)
    centroids = kmeans(sample, k, niter=iterations, seed=seed, spherical=spherical, device=device,
                       desc="SemDeDup k-means").centroids
    rule = f"eps {eps:g} (given)" if eps != AUTO else ""
    if eps == AUTO:
        eps, rule = auto_eps(sample, nearest_centroid(sample, centroids, "l2", device)[0], seed)
    del sample
    with spill_folder(pool, "semdedup") as folder:
        job = _Job(folder, names, centroids, order, float(eps), against, device, seed)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        sizes = np.zeros(k, dtype=np.int64)
        units = [(t, Path(table), int(starts[t])) for t, table in enumerate(pool.tables)]
        for _, c in pool.runtime.stream(job.assign, units, **task_resources(device)):
            sizes += c
        runs = cluster_runs(sizes, rows_within(pool.budget, 2 * centroids.shape[1] + 64, share=BUCKET_SHARE),
                            2 * pool.runtime.cpus())
        parts = pool.runtime.map(job.dedup_clusters, runs, "SemDeDup clusters", items=lambda r: r[1],
                                 item_unit="rows removed", num_cpus=task_cpus(pool))
    return {"uids": UidSet.union_of(p[0] for p in parts), "centroids": centroids,
            "removed": int(sum(p[1] for p in parts)), "sample_rows": size, "eps": eps, "eps_rule": rule}


def _sample(pool: ScoredPool, names: list[str], counts: list[int], size: int, k: int, seed: int) -> np.ndarray:
    """The k-means sample as float32: the first ``size`` rows in the row order of ``seed``, in that order,
    cut to fit ``SAMPLE_SHARE`` of the budget."""
    dim = sum(feature_widths_of(pool, names))
    fit = rows_within(pool.budget, 4 * dim, share=SAMPLE_SHARE, least=k)
    rows = first_rows(pool, counts, fit_count(size, fit, "SemDeDup's k-means", pool.budget), seed)
    return gather_rows(pool, names, counts, rows, dtype=np.float32)


def cluster_runs(sizes: np.ndarray, most_rows: int, least_runs: int) -> list[tuple[int, int]]:
    """Consecutive clusters in runs of at most ``most_rows`` rows (a bigger cluster alone), at least
    ``least_runs`` runs when there are that many clusters (so every worker gets some)."""
    most_rows = max(1, min(most_rows, -(-int(sizes.sum()) // max(1, least_runs))))
    runs, lo, rows = [], 0, 0
    for c, size in enumerate(sizes.tolist()):
        if rows and rows + size > most_rows:
            runs.append((lo, c))
            lo, rows = c, 0
        rows += size
    runs.append((lo, len(sizes)))
    return runs


@dataclass
class _Job:
    """What the assignment and dedup tasks of one run share (no per-row data)."""

    folder: Path
    names: list[str]
    centroids: np.ndarray
    order: str
    eps: float
    against: str
    device: str
    seed: int

    def table_file(self, t: int) -> Path:
        return self.folder / f"{t:06d}.npz"

    def assign(self, unit: tuple[int, Path, int]) -> np.ndarray:
        """Label table ``t``'s rows with their nearest centroid and write them grouped by cluster."""
        t, table, start = unit
        x = TableEmbeddings(table, self.names).rows()
        labels, _ = nearest_centroid(x, self.centroids, "l2", self.device)
        if self.order == "random":
            key = np.zeros(len(x), dtype=np.float32)  # the row order alone
        else:
            key = ranking_key(x, labels, self.centroids, self.order)
        uids = member_keys(read_members(table, []), table)
        return write_groups(self.table_file(t), labels, len(self.centroids),
                            {"x": x, "key": key, "tie": order_keys(uids, self.seed), "uid": uids,
                             "row": start + np.arange(len(x), dtype=np.int64), "label": labels.astype(np.int32)})

    def dedup_clusters(self, run: tuple[int, int]) -> tuple[UidSet, int]:
        """The kept uids of clusters ``run`` (all tables' rows), and how many rows were removed."""
        lo, hi = run
        files = sorted(self.folder.glob("[0-9]*.npz"))
        got = read_groups(files, lo, hi, ["x", "key", "tie", "uid", "row", "label"])
        labels = got["label"]
        ranking = in_order(got["tie"], got["uid"], got["row"], first=(labels, got["key"]))
        bounds = np.flatnonzero(np.diff(labels[ranking])) + 1
        keep = np.zeros(len(ranking), dtype=bool)
        for group in np.split(ranking, bounds):
            keep[group] = dedup_cluster(unit_rows(got["x"][group]), 1.0 - self.eps, self.against)
        return UidSet(np.asarray(got["uid"], dtype=KEY_DTYPE)[keep]), int((~keep).sum())


@register("semdedup", params=semdedup_run, keeps="eps: a smaller eps drops fewer near-duplicates")
def semdedup(pool: ScoredPool, *, report: dict | None = None, **params) -> UidSet:
    """Semantic deduplication: drop near-duplicates (cosine > 1 - eps) within k-means clusters.

    The parameters are ``semdedup_run``'s (its signature is the one list of them and their defaults)."""
    result = semdedup_run(pool, **params)
    if report is not None and result["centroids"] is not None:
        report.update(clusters=len(result["centroids"]), removed=result["removed"], sample_rows=result["sample_rows"],
                      eps=result["eps"], summary=f"{result['removed']:,} near-duplicates; {result['eps_rule']}")
    return result["uids"]
