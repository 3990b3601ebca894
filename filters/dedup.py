"""Deduplication: ``exact`` (same image bytes by sha256, repeated uids) or ``semantic`` (SemDeDup).

Exact: rows with the same ``sha256`` hold one image, and of each such group one row is kept: the first
in the pool's row order (``_row_order``: the smallest ``order_keys(uid, 0)``, a hash of the uid, then the
uid), wherever the rows are stored. Rows without a sha256 are never grouped. A subset holds each uid
once, so a uid is kept when one of its rows is kept; ``by: [uid]`` alone keeps every member uid.

| param | default | meaning |
| --- | --- | --- |
| method | exact | ``exact`` or ``semantic`` (then every ``semdedup`` parameter applies) |
| by | [sha256, uid] | keys whose repeats are dropped (exact); ``uid`` beside ``sha256`` changes nothing |

| order-sensitive step | decided by |
| --- | --- |
| which row of a sha256 group is kept | the smallest ``order_keys(uid, 0)``, then the smallest uid |

Memory is bounded (``_budget.py``) by hashing the keys into buckets through a spill folder:

1. a task per table writes its rows' (sha256 digest, order key, uid), grouped by bucket (a sha256 value
   is compared through its 16-byte BLAKE2b digest), and returns the uids of its rows without a sha256;
2. a task per bucket keeps the first row of each sha256 group.

Each task holds one bucket (about 60 bytes per row of it); the driver holds the kept uids.
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
from ._row_order import in_order, order_keys
from ._spill import read_groups, spill_folder, write_groups
from .columns import member_keys, read_members
from .registry import ScoredPool, register
from .semdedup import semdedup_run

METHODS = ("exact", "semantic")
EXACT_KEYS = ("sha256", "uid")
BUCKET_ROW_BYTES = 64  # what a bucket task holds per row (digest, order key, uid, sort orders)


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
    count: int  # buckets

    def split(self, unit: tuple[int, Path]) -> UidSet:
        """Write table ``t``'s sha256 digests grouped by bucket; return the uids of its rows without one."""
        t, table = unit
        members = read_members(table, ["sha256"], need="dedup")
        uids = member_keys(members, table)
        sha, valid = digests(members["sha256"].to_pylist())
        write_groups(self.folder / f"sha-{t:06d}.npz", buckets(sha[valid], self.count), self.count,
                     {"sha": sha[valid], "key": order_keys(uids[valid]), "uid": uids[valid]})
        return UidSet(uids[~valid])

    def first(self, b: int) -> UidSet:
        """The uid of the first row (in the row order) of each sha256 group of bucket ``b``."""
        got = read_groups(sorted(self.folder.glob("sha-*.npz")), b, b + 1, ["sha", "key", "uid"])
        order = in_order(got["key"], got["uid"])
        order = order[np.argsort(got["sha"][order], kind="stable")]  # by sha256, the row order within
        sha = got["sha"][order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = sha[1:] != sha[:-1]
        return UidSet(got["uid"][order][first])


def exact_dedup(pool: ScoredPool, by: list[str]) -> UidSet:
    """The uids exact dedup keeps (see the module docstring)."""
    if "sha256" not in by:
        return pool_uids(pool)
    n = int(sum(row_counts(pool)))
    count = max(1, -(-n // rows_within(pool.budget, BUCKET_ROW_BYTES, share=0.4)), min(2 * pool.runtime.cpus(), n // 1000))
    with spill_folder(pool, "dedup") as folder:
        job = _Exact(folder, count)
        parts = pool.runtime.map(job.split, [(t, Path(table)) for t, table in enumerate(pool.tables)], "dedup (keys)")
        parts += pool.runtime.map(job.first, list(range(count)), "dedup (sha256)", num_cpus=task_cpus(pool))
    return UidSet.union_of(parts)


def pool_uids(pool: ScoredPool) -> UidSet:
    """Every member uid."""
    return UidSet.union_of(pool.map(lambda t: UidSet(member_keys(read_members(Path(t), []), Path(t))), "dedup (uids)"))


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
