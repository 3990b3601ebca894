"""Deduplication: ``exact`` (same image bytes by sha256, repeated uids) or ``semantic`` (SemDeDup).

Exact: walking the pool in shard order, a row is kept when it is the first row with its ``sha256``
(rows without one are never grouped) and the first row with its uid. ``by`` chooses the keys.

| param | default | meaning |
| --- | --- | --- |
| method | exact | ``exact`` or ``semantic`` (then every ``semdedup`` parameter applies) |
| by | [sha256, uid] | keys whose repeats are dropped (exact) |
"""

from __future__ import annotations

import numpy as np

from poolsieve.core.errors import ConfigError
from poolsieve.core.uids import UidSet

from ._embeddings import check_param_names
from .registry import ScoredPool, register
from .semdedup import semdedup_run

METHODS = ("exact", "semantic")
EXACT_KEYS = ("sha256", "uid")


def first_occurrence(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Mask of rows holding the first occurrence of their value; invalid rows are always kept."""
    valid = np.ones(len(values), dtype=bool) if valid is None else valid
    keep = np.ones(len(values), dtype=bool)
    idx = np.flatnonzero(valid)
    _, first = np.unique(values[idx], return_index=True)
    keep[idx] = False
    keep[idx[first]] = True
    return keep


def exact_keep(pool: ScoredPool, by: list[str]) -> np.ndarray:
    columns = [c for c in by if c != "uid"]
    df = pool.read_columns(columns)
    keep = np.ones(len(df), dtype=bool)
    if "uid" in by:
        keep &= first_occurrence(df["uid"].to_numpy().astype(str))
    if "sha256" in by:
        sha = df["sha256"]
        valid = sha.notna().to_numpy() & (sha.fillna("").astype(str).str.len() > 0).to_numpy()
        keep &= first_occurrence(sha.fillna("").astype(str).to_numpy(), valid)
    return keep


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
    keep = exact_keep(pool, by)
    return UidSet(pool.uid_keys()[keep])
