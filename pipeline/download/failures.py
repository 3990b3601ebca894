"""Why samples failed, and ``shards/download_failures.parquet``, the list of every failed sample.

``failure_reason`` turns img2dataset's status and error message into a short reason (http_404, timeout,
denied, ...). ``update_failures`` keeps the failures file up to date incrementally (its schema metadata
records which shards it covers). ``reconcile_duplicates`` keeps each uid in one shard after
``--retry-failed`` fetched it again into a later shard.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poolsieve.core.fetch_clock import DEADLINE_MARK
from poolsieve.core.formats import STATUS_SUCCESS, atomic_path, write_json
from poolsieve.core.workspace import shard_stats_path
from poolsieve.pipeline.download.integrity import NOT_WRITTEN_STATUS
from poolsieve.pipeline.download.netguard import DENIED_MARK
from poolsieve.pipeline.download.plan import whole_shard_ids, whole_shards

FAILURES_NAME = "download_failures.parquet"


def failure_reason(status: str | None, error: str | None) -> str:
    """A short reason for a failed sample: http_404, timeout, deadline, decode, too_small, denied, ..."""
    if status == STATUS_SUCCESS:
        return STATUS_SUCCESS
    if status == NOT_WRITTEN_STATUS:
        return "not_written"
    msg = (error or "").lower()
    if DENIED_MARK in msg:
        return "denied"
    m = re.search(r"http error (\d{3})", msg)
    if m:
        return "redirect_loop" if "infinite loop" in msg else f"http_{m.group(1)}"
    if "redirect" in msg and "loop" in msg:
        return "redirect_loop"
    if DEADLINE_MARK in msg:  # the whole fetch (connect, headers, redirects, body) ran out of time
        return "deadline"
    if "timed out" in msg or "timeout" in msg:
        return "timeout"
    if "name or service not known" in msg or "name resolution" in msg or "nodename nor servname" in msg \
            or "no address associated" in msg or "getaddrinfo" in msg:
        return "dns"
    if "too large" in msg or "cv_io_max_image_pixels" in msg:
        return "too_large"
    if "format refused" in msg:
        return "unsupported_format"
    if "too small" in msg:
        return "too_small"
    if "aspect ratio" in msg:
        return "aspect_ratio"
    if "hash mismatch" in msg:
        return "hash_mismatch"
    if "x-robots-tag" in msg:
        return "opted_out"
    if "decoding error" in msg or "cannot identify image" in msg or "truncated" in msg:
        return "decode"
    if "connection refused" in msg or "connection reset" in msg or "remote end closed" in msg \
            or "incompleteread" in msg or "incomplete read" in msg:
        return "connection"
    if status == "failed_to_resize":
        return "decode"
    return "other"


def _shard_parquets(shards_dir: Path) -> list[tuple[int, Path]]:
    """(id, parquet) of the whole shards, by id."""
    return [(i, shards_dir / f"{name}.parquet") for i, name in sorted(whole_shards(shards_dir).items())]


FAILURE_COLUMNS = ("uid", "shard", "url", "caption", "key", "status", "error_message", "reason")
_COVER_KEY = b"poolsieve_shards_covered"


def collect_failures(shards_dir: Path, only: set[int] | None = None):
    """Failed samples of the whole shards (or of the ids in ``only``), with shard and reason (pandas)."""
    frames = []
    cols = ["uid", "url", "caption", "key", "status", "error_message"]
    for shard_id, path in _shard_parquets(shards_dir) if only is None or only else []:
        if only is not None and shard_id not in only:
            continue
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in cols if c in names]).to_pandas()
        bad = table[table["status"] != STATUS_SUCCESS].copy()
        if len(bad):
            bad.insert(1, "shard", shard_id)
            frames.append(bad)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "shard" else object) for c in FAILURE_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    df["reason"] = [failure_reason(s, e) for s, e in zip(df["status"], df["error_message"], strict=True)]
    return df[list(FAILURE_COLUMNS)]


def _ranges(ids: set[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def read_failures(shards_dir: Path):
    """``(failures DataFrame, shard ids it covers)`` from ``download_failures.parquet``; empty if absent."""
    path = shards_dir / FAILURES_NAME
    if not path.exists():
        return collect_failures(shards_dir, only=set()), set()
    table = pq.read_table(path)
    cover = json.loads((table.schema.metadata or {}).get(_COVER_KEY, b"[]"))
    return table.to_pandas(), {i for a, b in cover for i in range(a, b + 1)}


def update_failures(shards_dir: Path, rewritten: set[int] = frozenset()):
    """Bring ``download_failures.parquet`` up to date, reading only the shards it does not cover yet
    (and ``rewritten`` ones). Returns the failures of all whole shards."""
    whole = whole_shard_ids(shards_dir)
    old, covered = read_failures(shards_dir)
    dirty = (whole - covered) | (set(rewritten) & whole)
    kept = old[old["shard"].isin(whole - dirty)]
    fresh = collect_failures(shards_dir, only=dirty)
    df = pd.concat([d for d in (kept, fresh) if len(d)], ignore_index=True) if len(kept) or len(fresh) else fresh
    df = df.sort_values(["shard", "key"], kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           _COVER_KEY: json.dumps(_ranges(whole)).encode()})
    with atomic_path(shards_dir / FAILURES_NAME) as tmp:
        pq.write_table(table, tmp)
    return df


def reconcile_duplicates(shards_dir: Path, candidates: set[int]) -> set[int]:
    """Keep each uid in one shard parquet: a later attempt (higher shard id) replaces the failed rows
    of earlier ones. Only ``candidates`` are read (the shards with failures and the retry shards).
    Rewrites the earlier parquet and its stats; tars are untouched (failures have no member).
    Returns the ids of the rewritten shards."""
    latest: dict[str, int] = {}
    tables = {}
    parquets = {i: p for i, p in _shard_parquets(shards_dir) if i in candidates}
    for shard_id, path in parquets.items():
        t = pq.read_table(path, columns=["uid", "status"])
        tables[shard_id] = t
        for uid in t.column("uid").to_pylist():
            latest[uid] = shard_id  # ascending shard order: the last one wins
    rewritten = set()
    for shard_id, t in tables.items():
        uids = t.column("uid").to_pylist()
        status = t.column("status").to_pylist()
        drop = [latest[u] != shard_id and s != STATUS_SUCCESS for u, s in zip(uids, status, strict=True)]
        if not any(drop):
            continue
        parquet_path = parquets[shard_id]
        stats_path = shard_stats_path(parquet_path)
        full = pq.read_table(parquet_path)
        keep = full.filter(pc.invert(pc.is_in(full.column("uid"), value_set=_pa_array(
            [u for u, d in zip(uids, drop, strict=True) if d]))))
        with atomic_path(parquet_path) as tmp:
            pq.write_table(keep, tmp)
        stats = json.loads(stats_path.read_text())
        kept_status = keep.column("status").to_pylist()
        kept_errors = keep.column("error_message").to_pylist()
        status_dict = Counter(STATUS_SUCCESS if s == STATUS_SUCCESS else (e or s) for s, e in zip(kept_status, kept_errors,
                                                                                          strict=True))
        stats.update(count=len(kept_status), successes=kept_status.count(STATUS_SUCCESS),
                     failed_to_download=kept_status.count("failed_to_download"),
                     failed_to_resize=kept_status.count("failed_to_resize"), status_dict=dict(status_dict),
                     failed_to_write=kept_status.count(NOT_WRITTEN_STATUS),
                     moved_to_later_shards=int(stats.get("moved_to_later_shards", 0)) + sum(drop))
        write_json(stats_path, stats)
        rewritten.add(shard_id)
    return rewritten


def _pa_array(values: list[str]):
    return pa.array(values, type=pa.string())


def reconcile(shards_dir: Path, planned: int):
    """Drop superseded failure rows (see ``reconcile_duplicates``); return the up-to-date failures."""
    failures = update_failures(shards_dir)
    candidates = set(failures["shard"].astype(int)) | {i for i in whole_shard_ids(shards_dir) if i >= planned}
    rewritten = reconcile_duplicates(shards_dir, candidates)
    return update_failures(shards_dir, rewritten) if rewritten else failures
