"""Deduplication: ``exact`` (same image bytes by sha256, repeated uids) or ``semantic`` (SemDeDup).

Exact: walking the pool in shard order, a row is kept when it is the first row with its ``sha256``
(rows without one are never grouped) and the first row with its uid. ``by`` chooses the keys.

| param | default | meaning |
| --- | --- | --- |
| method | exact | ``exact`` or ``semantic`` (then every ``semdedup`` parameter applies) |
| by | [sha256, uid] | keys whose repeats are dropped (exact) |

Memory is bounded (``_budget.py``) by hashing the keys into buckets through a spill folder:

1. a task per table writes its rows' (sha256 digest, row, uid) and (uid, row), each grouped by bucket
   (a sha256 value is compared through its 16-byte BLAKE2b digest);
2. a task per sha256 bucket finds the rows that repeat an earlier row's sha256 and writes them,
   grouped by their uid's bucket;
3. a task per uid bucket keeps each uid whose first row repeats no earlier sha256.

Each task holds one bucket (about 40 bytes per row of it); the driver holds the kept uids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolsieve.core.errors import ConfigError
from poolsieve.core.uids import KEY_DTYPE, UidSet

from ._budget import rows_within, task_cpus
from ._embeddings import check_param_names, row_counts
from ._spill import read_groups, spill_folder, write_groups
from .columns import member_keys, read_members
from .registry import ScoredPool, register
from .semdedup import semdedup_run

METHODS = ("exact", "semantic")
EXACT_KEYS = ("sha256", "uid")
BUCKET_ROW_BYTES = 96  # what a bucket task holds per row (keys, rows, sort order)


def first_occurrence(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Mask of rows holding the first occurrence of their value; invalid rows are always kept."""
    valid = np.ones(len(values), dtype=bool) if valid is None else valid
    keep = np.ones(len(values), dtype=bool)
    idx = np.flatnonzero(valid)
    _, first = np.unique(values[idx], return_index=True)
    keep[idx] = False
    keep[idx[first]] = True
    return keep


def digests(values: list) -> tuple[np.ndarray, np.ndarray]:
    """(16-byte BLAKE2b digests of the non-empty strings, mask of them); other values get zero bytes."""
    out = np.zeros(len(values), dtype=KEY_DTYPE)
    valid = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is not None and str(v):
            out[i] = hashlib.blake2b(str(v).encode("utf-8", "surrogatepass"), digest_size=16).digest()
            valid[i] = True
    return out, valid


def buckets(keys: np.ndarray, count: int) -> np.ndarray:
    """A bucket in ``range(count)`` for each 16-byte key (mixed, so that keys alike spread)."""
    if count == 1 or len(keys) == 0:
        return np.zeros(len(keys), dtype=np.int64)
    halves = np.frombuffer(np.ascontiguousarray(keys, dtype=KEY_DTYPE).tobytes(), dtype="<u8").reshape(-1, 2)
    with np.errstate(over="ignore"):
        mixed = (halves[:, 0] ^ (halves[:, 1] * np.uint64(0x9E3779B97F4A7C15))) * np.uint64(0xBF58476D1CE4E5B9)
    return ((mixed >> np.uint64(33)) % np.uint64(count)).astype(np.int64)


@dataclass
class _Exact:
    """What the tasks of one exact dedup share (no per-row data)."""
    folder: Path
    by: list[str]
    count: int  # buckets

    def files(self, kind: str) -> list[Path]:
        return sorted(self.folder.glob(f"{kind}-*.npz"))

    def split(self, unit: tuple[int, Path, int]) -> UidSet:
        """Write table ``t``'s keys grouped by bucket; return the uids of its rows that no sha256 groups."""
        t, table, start = unit
        members = read_members(table, [c for c in self.by if c != "uid"], need="dedup")
        uids = member_keys(members, table)
        rows = start + np.arange(len(uids), dtype=np.int64)
        valid = np.zeros(len(uids), dtype=bool)
        if "sha256" in self.by:
            sha, valid = digests(members["sha256"].to_pylist())
            write_groups(self.folder / f"sha-{t:06d}.npz", buckets(sha[valid], self.count), self.count,
                         {"sha": sha[valid], "row": rows[valid], "uid": uids[valid]})
        if "uid" in self.by:
            write_groups(self.folder / f"uid-{t:06d}.npz", buckets(uids, self.count), self.count,
                         {"uid": uids, "row": rows})
            return UidSet()
        return UidSet(uids[~valid])  # by sha256 only: rows without one are kept

    def repeats(self, b: int) -> UidSet:
        """Rows of sha256 bucket ``b`` that repeat an earlier row's sha256: written for the uid buckets
        (by uid too), or the uids of the first rows returned (by sha256 only)."""
        got = read_groups(self.files("sha"), b, b + 1, ["sha", "row", "uid"])
        order = np.lexsort((got["row"], got["sha"]))
        first = np.ones(len(order), dtype=bool)
        first[1:] = got["sha"][order][1:] != got["sha"][order][:-1]
        if "uid" not in self.by:
            return UidSet(got["uid"][order][first])
        again = order[~first]
        write_groups(self.folder / f"rep-{b:06d}.npz", buckets(got["uid"][again], self.count), self.count,
                     {"row": got["row"][again]})
        return UidSet()

    def kept(self, b: int) -> UidSet:
        """uids of uid bucket ``b`` whose first row repeats no earlier sha256."""
        got = read_groups(self.files("uid"), b, b + 1, ["uid", "row"])
        order = np.lexsort((got["row"], got["uid"]))
        uid, row = got["uid"][order], got["row"][order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = uid[1:] != uid[:-1]
        uid, row = uid[first], row[first]
        if "sha256" in self.by:
            repeated = read_groups(self.files("rep"), b, b + 1, ["row"])["row"]
            uid = uid[~np.isin(row, repeated)]
        return UidSet(uid)


def exact_dedup(pool: ScoredPool, by: list[str]) -> UidSet:
    """The uids exact dedup keeps (see the module docstring)."""
    counts = row_counts(pool)
    n = int(sum(counts))
    count = max(1, -(-n // rows_within(pool.budget, BUCKET_ROW_BYTES, share=0.4)), min(2 * pool.runtime.cpus(), n // 1000))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    with spill_folder(pool, "dedup") as folder:
        job = _Exact(folder, by, count)
        units = [(t, Path(table), int(starts[t])) for t, table in enumerate(pool.tables)]
        parts = pool.runtime.map(job.split, units, "dedup (keys)")
        if "sha256" in by:
            parts += pool.runtime.map(job.repeats, list(range(count)), "dedup (sha256)", num_cpus=task_cpus(pool))
        if "uid" in by:
            parts += pool.runtime.map(job.kept, list(range(count)), "dedup (uids)", num_cpus=task_cpus(pool))
    return UidSet.union_of(parts)


@register("dedup")
def dedup(pool: ScoredPool, method: str = "exact", by: list[str] | tuple[str, ...] = EXACT_KEYS, **params) -> UidSet:
    """Drop duplicates: exact (sha256 of the image bytes, uid) or semantic (SemDeDup)."""
    if method not in METHODS:
        raise ConfigError(f"dedup: method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "semantic":
        check_param_names("dedup (semantic)", params, semdedup_run)
        return semdedup_run(pool, **params)["uids"]
    if params:
        raise ConfigError(f"filter dedup (exact): unknown parameter(s) {', '.join(sorted(params))}; known: method, by")
    by = [by] if isinstance(by, str) else list(by)
    bad = [b for b in by if b not in EXACT_KEYS]
    if bad or not by:
        raise ConfigError(f"dedup: by must list keys from {', '.join(EXACT_KEYS)}, got {by!r}")
    return exact_dedup(pool, by)
