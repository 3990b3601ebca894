"""Reshard's plan: which pool samples go, in which order, under which keys, into which output shard.

Scans of pool shards arrive in pool order; ``OutputPlanner`` gives every kept sample copy its
global position (pool-shard order, then key order) and cuts output shards of ``shard_size`` as soon
as they are full, so writing can start while later pool shards are still being scanned. With a
shuffle buffer the order is only known at the end, and everything is cut then. Either way the
same input gives the same shards. Everything is held as arrays (a copy is a source shard, a sample of
its scan, a uid and a copy number), and a scan is dropped once all its copies are cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolsieve.core.formats import filtered_shard_name
from poolsieve.core.uids import KEY_DTYPE
from poolsieve.core.workspace import shard_stats_path
from poolsieve.pipeline.reshard.scan import ShardScan


@dataclass
class WriteUnit:
    """One output shard: its copies in order (``{uid}-{copy_number}``, which source tar, how many members)
    and their members (kind, offset and size in the source tar)."""

    index: int
    tar_path: str
    stats_path: str
    sources: list[str]  # the pool tars this shard reads from
    source: np.ndarray  # per copy: index into ``sources``
    uids: np.ndarray  # per copy: the uid's 16-byte key (core.uids)
    copy_number: np.ndarray  # per copy
    member_count: np.ndarray  # per copy
    member_kind: np.ndarray  # per member: index into scan.KINDS
    member_offset: np.ndarray
    member_size: np.ndarray


def buffered_shuffle_order(n: int, bufsize: int, seed: int) -> np.ndarray:
    """Order of a seeded shuffle buffer of ``bufsize`` over ``n`` items (identity when ``bufsize <= 1``)."""
    if bufsize <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if bufsize >= n:
        return rng.permutation(n).astype(np.int64)
    picks = rng.integers(0, bufsize, size=n - bufsize).tolist()
    buf = list(range(bufsize))
    out: list[int] = []
    for incoming, slot in zip(range(bufsize, n), picks, strict=True):
        out.append(buf[slot])
        buf[slot] = incoming
    out.extend(np.asarray(buf)[rng.permutation(bufsize)].tolist())
    return np.asarray(out, dtype=np.int64)


def copy_numbers_within(uids: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """First copy number of each sample among earlier samples of the same uid (or uid's row) in this array."""
    _, inverse = np.unique(uids, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    c = copies[order]
    before = np.cumsum(c) - c
    group_first = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
    group_of_pos = np.repeat(np.arange(len(group_first)), np.diff(np.r_[group_first, len(order)]))
    base = np.empty(len(uids), np.int64)
    base[order] = before - before[group_first][group_of_pos]
    return base


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices ``starts[i] .. starts[i] + counts[i] - 1`` of every i, concatenated."""
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))


class OutputPlanner:
    """Feed it scans in pool-shard order; it returns output shards as they fill up."""

    def __init__(self, out_dir: Path, sources: list[str], shard_size: int, shuffle_bufsize: int = 0,
                 seed: int = 0, *, subset_rows: int):
        self.out_dir, self.sources, self.shard_size = out_dir, sources, shard_size
        self.shuffle_bufsize, self.seed = shuffle_bufsize, seed
        self.scans: dict[int, tuple[ShardScan, np.ndarray]] = {}  # scan index -> (scan, its samples' first member)
        self.scans_added = 0
        self.planned = np.zeros(subset_rows, np.int64)  # copies planned so far per uid (at its first subset row)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (src, sample, uid, j)
        self.shards_planned = 0
        self.copies_planned = 0

    def add(self, scan: ShardScan) -> list[WriteUnit]:
        """Take the next pool shard's scan; return the output shards it completes."""
        s_idx = self.scans_added
        self.scans_added += 1
        if len(scan.uids):
            self.scans[s_idx] = (scan, np.cumsum(scan.member_count) - scan.member_count)
            rows, copies = scan.subset_rows, scan.copies
            base = self.planned[rows] + copy_numbers_within(rows, copies)
            np.add.at(self.planned, rows, copies)
            sample = np.repeat(np.arange(len(rows)), copies)
            j = np.arange(len(sample)) - np.repeat(np.cumsum(copies) - copies, copies) + base[sample]
            self.pending.append((np.full(len(sample), s_idx, np.int64), sample, scan.uids[sample], j))
        return [] if self.shuffle_bufsize > 1 else self._cut(final=False)

    def finish(self) -> list[WriteUnit]:
        """The remaining output shards (the last one may be partial)."""
        if self.shuffle_bufsize > 1 and self.pending:
            columns = self._pending()
            order = buffered_shuffle_order(len(columns[0]), self.shuffle_bufsize, self.seed)
            self.pending = [tuple(c[order] for c in columns)]
        return self._cut(final=True)

    def _pending(self) -> tuple[np.ndarray, ...]:
        if not self.pending:
            return (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, KEY_DTYPE), np.empty(0, np.int64))
        return tuple(np.concatenate(c) for c in zip(*self.pending, strict=True))

    def _cut(self, final: bool) -> list[WriteUnit]:
        src, sample, uid, j = self._pending()
        units, lo, n = [], 0, len(src)
        while n - lo >= self.shard_size or (final and lo < n):
            hi = min(lo + self.shard_size, n)
            units.append(self._unit(src[lo:hi], sample[lo:hi], uid[lo:hi], j[lo:hi]))
            lo = hi
        self.pending = [(src[lo:], sample[lo:], uid[lo:], j[lo:])] if lo < n else []
        if self.shuffle_bufsize <= 1:  # scans whose copies are all cut are no longer needed
            oldest = int(src[lo]) if lo < n else self.scans_added
            for s in [s for s in self.scans if s < oldest]:
                del self.scans[s]
        return units

    def _unit(self, src: np.ndarray, sample: np.ndarray, uid: np.ndarray, j: np.ndarray) -> WriteUnit:
        involved = np.unique(src)
        local_src = np.searchsorted(involved, src)
        scans = [self.scans[int(s)] for s in involved]
        sample_base = np.cumsum([0] + [len(scan.uids) for scan, _ in scans])
        member_base = np.cumsum([0] + [len(scan.member_kind) for scan, _ in scans])
        first = np.concatenate([f + b for (_, f), b in zip(scans, member_base[:-1], strict=True)])
        count = np.concatenate([scan.member_count for scan, _ in scans])
        at = sample_base[local_src] + sample
        rows = _ranges(first[at], count[at])
        index = self.shards_planned
        self.shards_planned += 1
        self.copies_planned += len(src)
        tar = self.out_dir / f"{filtered_shard_name(index)}.tar"
        return WriteUnit(index, str(tar), str(shard_stats_path(tar)), [self.sources[int(s)] for s in involved],
                         local_src.astype(np.int32), uid, j, count[at],
                         np.concatenate([scan.member_kind for scan, _ in scans])[rows],
                         np.concatenate([scan.member_offset for scan, _ in scans])[rows],
                         np.concatenate([scan.member_size for scan, _ in scans])[rows])
