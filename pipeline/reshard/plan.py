"""Reshard's plan: which pool samples go, in which order, under which keys, into which output shard.

Scans of pool shards arrive in pool order; ``OutputPlanner`` gives every kept sample copy its
global position (pool-shard order, then key order) and cuts output shards of ``shard_size`` as soon
as they are full, so writing can start while later pool shards are still being scanned. With a
shuffle buffer the order is only known at the end, and everything is cut then. Either way the
same input gives the same shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from poolsieve.core.formats import filtered_shard_name
from poolsieve.core.uids import SUBSET_DTYPE, pairs_to_uids
from poolsieve.core.workspace import shard_stats_path


def _empty(dtype: type | np.dtype = np.int64):
    return field(default_factory=lambda: np.empty(0, dtype))


@dataclass
class ShardScan:
    """The samples of one pool shard that are in the subset, with where their members lie."""

    tar_path: str
    samples: int = 0
    samples_without_uid: int = 0
    skipped_members: int = 0
    uids: np.ndarray = _empty(SUBSET_DTYPE)
    keys: list[str] = field(default_factory=list)
    copies: np.ndarray = _empty()
    span_start: np.ndarray = _empty()
    span_end: np.ndarray = _empty()
    member_start: np.ndarray = _empty()
    member_count: np.ndarray = _empty()
    member_ext: list[str] = field(default_factory=list)
    member_offset: np.ndarray = _empty()
    member_size: np.ndarray = _empty()


@dataclass
class WriteUnit:
    """One output shard and, in order, the samples it holds (member offsets in the pool tars)."""

    index: int
    tar_path: str
    stats_path: str
    sources: list[str]
    source: np.ndarray
    out_keys: list[str]
    span_start: np.ndarray
    span_end: np.ndarray
    member_start: np.ndarray
    member_count: np.ndarray
    member_ext: list[str]
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
    """First copy number of each sample among earlier samples of the same uid in this array."""
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


class OutputPlanner:
    """Feed it scans in pool-shard order; it returns output shards as they fill up."""

    def __init__(self, out_dir: Path, sources: list[str], shard_size: int, shuffle_bufsize: int = 0,
                 seed: int = 0):
        self.out_dir, self.sources, self.shard_size = out_dir, sources, shard_size
        self.shuffle_bufsize, self.seed = shuffle_bufsize, seed
        self.scans: list[ShardScan] = []
        self.seen_uids = np.empty(0, SUBSET_DTYPE)  # sorted; copies written so far per uid
        self.seen_copies = np.empty(0, np.int64)
        self.pending_src: list[np.ndarray] = []
        self.pending_local: list[np.ndarray] = []
        self.pending_keys: list[str] = []
        self.shards_planned = 0
        self.copies_planned = 0

    def add(self, scan: ShardScan) -> list[WriteUnit]:
        """Take the next pool shard's scan; return the output shards it completes."""
        s_idx = len(self.scans)
        self.scans.append(scan)
        if scan.keys:
            order = np.argsort(np.asarray(scan.keys, dtype=object), kind="stable").astype(np.int64)
            uids, copies = scan.uids[order], scan.copies[order]
            base = self._earlier_copies(uids, copies) + copy_numbers_within(uids, copies)
            sample_of_copy = np.repeat(np.arange(len(uids)), copies)
            j = np.arange(len(sample_of_copy)) - np.repeat(np.cumsum(copies) - copies, copies) + base[sample_of_copy]
            uid_hex = pairs_to_uids(uids)
            self.pending_src.append(np.full(len(sample_of_copy), s_idx, np.int64))
            self.pending_local.append(order[sample_of_copy])
            self.pending_keys.extend(f"{uid_hex[s]}-{c}" for s, c in zip(sample_of_copy.tolist(), j.tolist(),
                                                                           strict=True))
        return [] if self.shuffle_bufsize > 1 else self._cut(final=False)

    def finish(self) -> list[WriteUnit]:
        """The remaining output shards (the last one may be partial)."""
        if self.shuffle_bufsize > 1 and self.pending_keys:
            order = buffered_shuffle_order(len(self.pending_keys), self.shuffle_bufsize, self.seed)
            self.pending_src = [np.concatenate(self.pending_src)[order]]
            self.pending_local = [np.concatenate(self.pending_local)[order]]
            self.pending_keys = [self.pending_keys[i] for i in order.tolist()]
        return self._cut(final=True)

    def _earlier_copies(self, uids: np.ndarray, copies: np.ndarray) -> np.ndarray:
        """Copies of each uid planned from earlier pool shards; records this shard's copies."""
        unique, inverse = np.unique(uids, return_inverse=True)
        inverse = inverse.ravel()
        totals = np.bincount(inverse, weights=copies, minlength=len(unique)).astype(np.int64)
        idx = np.searchsorted(self.seen_uids, unique)
        found = idx < len(self.seen_uids)
        found[found] = self.seen_uids[idx[found]] == unique[found]
        earlier = np.zeros(len(unique), np.int64)
        earlier[found] = self.seen_copies[idx[found]]
        self.seen_copies[idx[found]] += totals[found]
        new = ~found
        self.seen_uids = np.insert(self.seen_uids, idx[new], unique[new])
        self.seen_copies = np.insert(self.seen_copies, idx[new], totals[new])
        return earlier[inverse]

    def _cut(self, final: bool) -> list[WriteUnit]:
        if not self.pending_keys:
            return []
        src, local = np.concatenate(self.pending_src), np.concatenate(self.pending_local)
        units, lo, n = [], 0, len(self.pending_keys)
        while n - lo >= self.shard_size or (final and lo < n):
            hi = min(lo + self.shard_size, n)
            units.append(self._unit(src[lo:hi], local[lo:hi], self.pending_keys[lo:hi]))
            lo = hi
        self.pending_src, self.pending_local = [src[lo:]], [local[lo:]]
        self.pending_keys = self.pending_keys[lo:]
        return units

    def _unit(self, src: np.ndarray, local: np.ndarray, out_keys: list[str]) -> WriteUnit:
        span_start, span_end, mstart, mcount, exts, offsets, sizes = [], [], [], [], [], [], []
        for s, i in zip(src.tolist(), local.tolist(), strict=True):
            scan = self.scans[s]
            span_start.append(int(scan.span_start[i]))
            span_end.append(int(scan.span_end[i]))
            first, count = int(scan.member_start[i]), int(scan.member_count[i])
            mstart.append(len(exts))
            mcount.append(count)
            exts.extend(scan.member_ext[first:first + count])
            offsets.extend(scan.member_offset[first:first + count].tolist())
            sizes.extend(scan.member_size[first:first + count].tolist())
        index = self.shards_planned
        self.shards_planned += 1
        self.copies_planned += len(out_keys)
        tar = self.out_dir / f"{filtered_shard_name(index)}.tar"
        return WriteUnit(index, str(tar), str(shard_stats_path(tar)),
                         self.sources, src.astype(np.int32), out_keys, np.array(span_start, np.int64),
                         np.array(span_end, np.int64), np.array(mstart, np.int64), np.array(mcount, np.int64),
                         exts, np.array(offsets, np.int64), np.array(sizes, np.int64))
