"""``clip_score``: keep pairs whose score column is at least a threshold, or the top fraction of the pool.

``threshold: t`` keeps rows with ``score >= t``. ``fraction: f`` keeps the top ``f`` of the whole pool
by DataComp's rule: with ``N`` members, the threshold is the ``int(N * f)``-th largest score
(0-based) and every row with ``score >= threshold`` is kept, so ties at the cut are all kept and the
subset has at least ``int(N * f) + 1`` rows. A NaN score is never kept.

The cut is global over all shards, found without gathering the column in one process: each shard
returns a histogram of its scores over the top 16 bits of their float32 bit pattern (order
preserving), the driver finds the bucket holding the cut, and a second pass returns the uids above
that bucket plus the exact scores of the few rows inside it. Any score column works:
``column: clip_l14_similarity_score``, or ``model: l14`` for the same (DataComp's ``--arch``); the
default is ``clip_b32_similarity_score``. A pool scored by other models (a scorer of your own: its
column is ``clip_scorer_similarity_score``) lacks that column: the error names the calls that read the
columns it has, ready to paste (``clip_score(model=scorer, fraction=0.3)``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import score_column
from poolsieve.core.uids import UidSet

from .columns import as_task, float_column, member_keys, per_table, read_members, table_columns
from .registry import ScoredPool, register

DEFAULT_COLUMN = "clip_b32_similarity_score"
# a bucket with more rows than this is split once more on the low 16 bits before its scores are gathered
MAX_GATHERED = 4_000_000


def order_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the order of ``float32(values)`` (NaN-free input; -0.0 == 0.0)."""
    f32 = values.astype(np.float32) + np.float32(0.0)  # -0.0 + 0.0 == +0.0
    bits = f32.view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000))


def _scores(path: Path, column: str, uid: bool = True) -> tuple[Any, np.ndarray]:
    table = read_members(path, [column], need="clip_score", uid=uid)
    return table, float_column(table, column)


def shard_histogram(path: Path, column: str, shift: int, bucket: int | None) -> tuple[int, np.ndarray, np.ndarray]:
    """``(members, buckets, counts)``: non-NaN scores bucketed by ``key >> shift`` (inside ``bucket`` at
    the coarser level when given)."""
    _, values = _scores(path, column, uid=False)
    keys = order_keys(values[~np.isnan(values)])
    if bucket is not None:
        keys = keys[(keys >> np.uint32(16)) == bucket]
    buckets, counts = np.unique(keys >> np.uint32(shift), return_counts=True)
    return len(values), buckets, counts


def shard_cut(path: Path, column: str, shift: int, bucket: int) -> tuple[UidSet, np.ndarray, np.ndarray]:
    """``(uids above the bucket, keys inside it, their scores)`` for one shard."""
    table, values = _scores(path, column)
    uids = member_keys(table, path)
    valid = ~np.isnan(values)
    level = np.zeros(len(values), dtype=np.int64) - 1
    level[valid] = (order_keys(values[valid]) >> np.uint32(shift)).astype(np.int64)
    inside = level == bucket
    return UidSet(uids[level > bucket]), uids[inside], values[inside]


def decide_threshold(table: Any, column: str, threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return float_column(table, column) >= threshold


def _merge_histograms(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    members = sum(p[0] for p in parts)
    buckets = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint32)
    counts = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
    merged, inverse = np.unique(buckets, return_inverse=True)
    return members, merged, np.bincount(inverse, weights=counts, minlength=len(merged)).astype(np.int64)


def _bucket_of_rank(buckets: np.ndarray, counts: np.ndarray, rank: int) -> tuple[int, int, int]:
    """Bucket holding the ``rank``-th largest (0-based), rows in higher buckets, rows in it."""
    desc_counts = counts[::-1]
    above_incl = np.cumsum(desc_counts)
    i = int(np.searchsorted(above_incl, rank, side="right"))
    above = int(above_incl[i - 1]) if i else 0
    return int(buckets[::-1][i]), above, int(desc_counts[i])


def fraction_cut(pool: ScoredPool, column: str, fraction: float, report: dict | None = None) -> UidSet:
    """The top ``fraction`` of the pool by ``column``, ties at the cut kept."""
    members, buckets, counts = _merge_histograms(pool.map(
        as_task(shard_histogram, column=column, shift=16, bucket=None), "clip_score histogram"))
    scored = int(counts.sum())
    rank = int(members * fraction)
    if report is not None:
        report.update(members=members, scored=scored, rank=rank)
    if scored == 0:
        return UidSet()
    if rank >= scored:  # the cut falls on NaN scores (DataComp would keep nothing) or past the end
        rank = scored - 1
    shift, (bucket, above, inside) = 16, _bucket_of_rank(buckets, counts, rank)
    if inside > MAX_GATHERED:
        _, fine, fine_counts = _merge_histograms(pool.map(
            as_task(shard_histogram, column=column, shift=0, bucket=bucket), "clip_score histogram (fine)"))
        fine_bucket, fine_above, inside = _bucket_of_rank(fine, fine_counts, rank - above)
        shift, bucket, above = 0, fine_bucket, above + fine_above
    parts = pool.map(as_task(shard_cut, column=column, shift=shift, bucket=bucket), "clip_score cut")
    kept_above = UidSet.union_of([p[0] for p in parts])
    cand_keys = np.concatenate([p[1] for p in parts])
    cand_values = np.concatenate([p[2] for p in parts])
    threshold = -np.sort(-cand_values)[rank - above]
    if report is not None:
        report.update(threshold=float(threshold), gathered=int(len(cand_values)))
    return kept_above | UidSet(cand_keys[cand_values >= threshold])


def check_column(pool: ScoredPool, column: str, given: dict[str, Any]) -> None:
    """``InputError`` naming the fix when the first score table lacks ``column``: the calls that read the
    score columns it has (``clip_score(model=KEY, ...)``), else its numeric columns (``column=NAME``)."""
    if not pool.tables or column in (names := table_columns(Path(pool.tables[0]))):
        return
    table = pq.read_schema(pool.tables[0])
    scores = [n[len("clip_"):-len("_similarity_score")] for n in names
              if n.startswith("clip_") and n.endswith("_similarity_score") and n != "clip_similarity_score"]
    numeric = [n for n in names if n not in ("uid", "status") and pa.types.is_floating(table.field(n).type)]
    args = "".join(f", {k}={v}" for k, v in given.items() if v is not None)
    calls = [f"clip_score(model={k}{args})" for k in scores] or [f"clip_score(column={n}{args})" for n in numeric]
    which = "the default, a B/32 CLIP's score" if column == DEFAULT_COLUMN else "the one asked for"
    fix = f"use {' or '.join(calls)}" if calls else "score the pool first (poolsieve score)"
    raise InputError(pool.tables[0], f"clip_score reads column {column} ({which}), which this score table lacks; "
                                     f"{fix}")


@register("clip_score")
def clip_score(pool: ScoredPool, *, column: str | None = None, model: str | None = None,
               threshold: float | None = None, fraction: float | None = None,
               report: dict | None = None) -> UidSet:
    """``score >= threshold``, or the top ``fraction`` of the whole pool (ties at the cut kept)."""
    if column is not None and model is not None:
        raise ConfigError("clip_score takes 'column' or 'model' (a model key such as l14), not both")
    column = column or (score_column(str(model)) if model is not None else DEFAULT_COLUMN)
    if (threshold is None) == (fraction is None):
        raise ConfigError("clip_score needs exactly one of 'threshold' or 'fraction'")
    check_column(pool, column, {"threshold": threshold, "fraction": fraction})
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"clip_score: fraction must be a number in (0, 1], got {fraction!r}")
        return fraction_cut(pool, column, float(fraction), report)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ConfigError(f"clip_score: threshold must be a number, got {threshold!r}")
    if report is not None:
        report.update(threshold=float(threshold))
    return per_table(pool, partial(decide_threshold, column=column, threshold=float(threshold)), [column], "clip_score")
