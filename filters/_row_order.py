"""The pool's row order: what a filter's order-sensitive steps follow instead of the order rows are stored in.

img2dataset writes a shard's samples in the order their fetches finish, and one pool can be cut into
shards in many ways (samples per shard, metadata files, workers): the same rows come stored in another
order each time. Wherever a filter's result could follow that order (which of equal rows is kept, which
rows a k-means or an IVF index trains on and in which order, ties at a cut), it follows this one: rows
sorted by ``order_keys(uid, seed)``, a 64-bit mix (splitmix64's finaliser) of the uid's 16 bytes and
the filter's seed, then by the uid itself. That is a seeded shuffle that depends on the uids alone, so
the same pool gives the same order however its rows are stored. Only rows that share a uid (never in a
downloaded pool: its metadata's uids are unique) are left in pool order between themselves.

- ``order_keys``: the key of each uid.
- ``first_rows``: the ``m`` member rows that come first in the order (among the rows a mask passes), in
  that order: the sample a k-means trains on. Each table's task returns only its rows whose keys can
  be among the first ``m`` (below a cut a little above ``m / rows`` of the key range), so the driver
  holds about 32 bytes per chosen row, never per pool row.
- ``rank_rows``: every member row's place in the order (``0..n-1``), sorted in buckets through a spill
  folder (a task per table, then a task per bucket; no process holds more than one bucket):
  ``ranks.npy`` (the rank of each pool row) and ``rows.npy`` (the pool row of each rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from poolsieve.core.uids import KEY_DTYPE

from ._budget import rows_within, task_cpus
from ._spill import DiskArray, read_groups, write_groups
from .columns import member_keys, read_members

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
RANK_ROW_BYTES = 64  # what a bucket task holds per row (key, uid, row, sort order, ranks)
RANKS, ROWS = "ranks.npy", "rows.npy"
MARGIN_SD = 6  # first_rows' cut: standard deviations of the count below it, above m


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every output bit depends on every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def order_keys(uids: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint64 key of each ``S16`` uid: ``mix(mix(high ^ mix(seed + golden)) ^ low)`` over its two big-endian
    halves (the halves of DataComp's ``u8,u8`` pair)."""
    halves = np.frombuffer(np.ascontiguousarray(uids, dtype=KEY_DTYPE).tobytes(), dtype=">u8").reshape(-1, 2)
    halves = halves.astype(np.uint64)
    with np.errstate(over="ignore"):
        salt = _mix(np.array([np.uint64(int(seed) % 2**64) + _GOLDEN], dtype=np.uint64))[0]
        return _mix(_mix(halves[:, 0] ^ salt) ^ halves[:, 1])


def in_order(keys: np.ndarray, uids: np.ndarray, rows: np.ndarray | None = None,
             first: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Indices that sort rows by (``*first``, key, uid[, row]): ``first`` are sort keys that come before
    the row order (a cluster, a rank within it), the most significant first."""
    halves = np.ascontiguousarray(uids, dtype=KEY_DTYPE).view(">u8").reshape(-1, 2)
    columns = [halves[:, 1], halves[:, 0], keys, *reversed(first)]
    return np.lexsort(columns if rows is None else [rows, *columns])


def first_rows(pool, counts: Sequence[int], m: int, seed: int, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Pool rows (member rows numbered across the tables, ``counts`` per table) of the ``m`` rows first in
    the order of ``seed`` among those ``masks`` passes (all when None), in that order.

    Keys are uniform, so the first ``m`` of ``total`` rows have keys below about ``m / total`` of the key
    range: each table returns only its rows below a cut ``MARGIN_SD`` standard deviations above that (and at
    most ``m`` of them), and the driver holds a few more rows than ``m``; in the rare case that fewer than
    ``m`` rows fall below the cut, the cut doubles and the tables are read again."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(sum(counts)) if masks is None else int(sum(int(k.sum()) for k in masks))
    units = [(Path(t), int(starts[i]), None if masks is None else masks[i]) for i, t in enumerate(pool.tables)]
    share = max(1, m + MARGIN_SD * m ** 0.5 + 16) / max(total, 1)
    while True:
        cut = None if share >= 1 else np.uint64(int(share * 2**64))
        parts = pool.runtime.map(_FirstOfTable(m, seed, cut), units, "row order (sample)")
        if not parts:
            return np.zeros(0, np.int64)
        keys, uids, rows = (np.concatenate([p[i] for p in parts]) for i in range(3))
        if cut is None or len(rows) >= m:
            return rows[in_order(keys, uids, rows)[:m]]
        share *= 2


class _FirstOfTable:
    """A table's task of ``first_rows``: (keys, uids, pool rows) of its first rows below ``cut``, at most ``m``."""

    def __init__(self, m: int, seed: int, cut: np.uint64 | None):
        self.m, self.seed, self.cut = m, seed, cut

    def __call__(self, unit: tuple[Path, int, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        table, start, mask = unit
        uids = member_keys(read_members(table, []), table)
        local = np.arange(len(uids), dtype=np.int64) if mask is None else np.flatnonzero(mask)
        uids = uids[local]
        keys = order_keys(uids, self.seed)
        if self.cut is not None:
            below = keys < self.cut
            local, keys, uids = local[below], keys[below], uids[below]
        if len(keys) > self.m:
            local, keys, uids = (a[in_order(keys, uids, local)[:self.m]] for a in (local, keys, uids))
        return keys, uids, start + local


def rank_rows(pool, counts: Sequence[int], seed: int, folder: Path) -> tuple[DiskArray, DiskArray]:
    """Write ``ranks.npy`` (each pool row's rank in the order of ``seed``) and ``rows.npy`` (the pool row
    of each rank) into the spill folder ``folder``; see the module docstring."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(starts[-1])
    want = max(-(-n // rows_within(pool.budget, RANK_ROW_BYTES, share=0.4)), min(2 * pool.runtime.cpus(), n // 1000))
    bits = max(0, int(want - 1).bit_length()) if want > 1 else 0
    count = 1 << bits
    ranks = DiskArray.create(folder / RANKS, (n,), np.int64)
    rows = DiskArray.create(folder / ROWS, (n,), np.int64)

    def split(unit: tuple[int, Path, int]) -> np.ndarray:
        t, table, start = unit
        uids = member_keys(read_members(table, []), table)
        keys = order_keys(uids, seed)
        bucket = (keys >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(keys), np.int64)
        return write_groups(folder / f"order-{t:06d}.npz", bucket, count,
                            {"key": keys, "uid": uids, "row": start + np.arange(len(uids), dtype=np.int64)})

    sizes = np.sum(pool.runtime.map(split, [(t, Path(p), int(starts[t])) for t, p in enumerate(pool.tables)],
                                    "row order (keys)"), axis=0) if pool.tables else np.zeros(count, np.int64)
    base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    files = [folder / f"order-{t:06d}.npz" for t in range(len(pool.tables))]

    def rank_bucket(b: int) -> int:
        got = read_groups(files, b, b + 1, ["key", "uid", "row"])
        placed = got["row"][in_order(got["key"], got["uid"], got["row"])]
        ranks.write(placed, base[b] + np.arange(len(placed), dtype=np.int64))
        rows.write(slice(int(base[b]), int(base[b + 1])), placed)
        return len(placed)

    pool.runtime.map(rank_bucket, [b for b in range(count) if sizes[b]], "row order (ranks)", num_cpus=task_cpus(pool))
    for f in files:
        f.unlink(missing_ok=True)
    return ranks, rows
