"""Copy a uid subset out of the pool's shards into fixed-size training shards (DataComp's resharder layout).

Pass 1 (``scan.py``, a Ray task per pool shard) reads the tar front to back in large blocks, parsing
its headers and each sample's ``.json`` (for its uid) from memory, and keeps the samples in the subset
(sorted-array lookup); no image is decoded, and only members of the allowed kinds
(``core.member_kinds``) are kept: any other kind (``.pyd``, ``.pth``, ...) is counted per kind in the
summary and never copied. The planner (``plan.py``) gives every kept sample a global position
(pool-shard order, then key order, optionally a seeded shuffle buffer) and cuts output shards of
``shard_size``: every shard is full but the last. Pass 2 (``write.py``, a Ray task per output shard)
copies the members' raw bytes under new keys ``{uid}-{j}`` (DataComp's naming; a uid listed k times is
written k times as ``-0 .. -(k-1)``) and renames the shard into place when whole. On Ray an output
shard is written as soon as the scans in front of it are in, so writing overlaps scanning; the files
are the same either way.

Output, in ``filtered/{name}/``: ``{:08d}.tar``, ``{:08d}_stats.json`` (``{"successes": n}``),
``meta.json`` (with DataComp's ``output_shard_count`` / ``output_shard_format``), ``sample_ids.npy``
(a copy of the subset file, written first: the tasks read this copy) and ``missing_uids.npy`` (subset
uids not found in the pool). One reshard at a time writes a folder (the writer's lock of
``filtered/{name}``); a subset file that changes before the end makes the run refuse to finish, and a
task lost with its Ray node is re-run elsewhere (``Runtime.remote``). A rerun is skipped when the
output is up to date by content (``fingerprint.py``); which files a run may remove is ``output_dir.py``'s.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import atomic_path, file_sha256, write_json, write_subset
from poolsieve.core.names import check_name
from poolsieve.core.progress import print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage, option
from poolsieve.core.subsets import SubsetSnapshot, read_subset_snapshot
from poolsieve.core.uids import SUBSET_DTYPE, pairs_to_keys, pairs_to_uids
from poolsieve.core.untrusted_files import regular_file_size
from poolsieve.core.workspace import Workspace, shard_stats_path
from poolsieve.pipeline.reshard import fingerprint
from poolsieve.pipeline.reshard.output_dir import (
    KEYS_NAME,
    META_NAME,
    MISSING_NAME,
    OUTPUT_SHARD_FORMAT,
    OUTPUT_STATS_FORMAT,
    PLAN_NAME,
    SUBSET_COPY_NAME,
    TOOL,
    claim_output,
    clear_output,
    complete,
    read_record,
)
from poolsieve.pipeline.reshard.plan import OutputPlanner, WriteUnit
from poolsieve.pipeline.reshard.scan import OTHER_KINDS, ScanUnit, ShardScan
from poolsieve.pipeline.reshard.schedule import run_units


@dataclass
class ReshardConfig:
    """The ``reshard:`` section; each option is also a flag (``shard_size`` -> ``--shard-size``)."""

    subset: str | None = option(None, "subset name (subsets/NAME.npy) or path to a DataComp uid .npy file")
    name: str | None = option(None, "output folder under filtered/ (default: the subset file's name)")
    shard_size: int = option(10000, "samples per output shard (DataComp's)")
    shuffle_bufsize: int = option(0, "shuffle buffer in samples (0: pool order)")
    seed: int = option(0, "seed of the shuffle buffer")


@dataclass
class _Pool:
    """The pool shards a run reads: paths, sizes (checked regular files) and what the output depends on."""

    tars: list[Path]
    sizes: list[int]
    plan: str = ""
    identity: str = ""


@dataclass
class _Tally:
    """What the scans found, kept as the run goes (the scans themselves are not kept)."""

    samples: int = 0
    samples_without_uid: int = 0
    skipped_kinds: Counter = field(default_factory=Counter)
    found_rows: list[np.ndarray] = field(default_factory=list)  # subset rows of the uids found
    digests: list[str] = field(default_factory=list)
    identities: list[tuple[int, ...]] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def add(self, scan: ShardScan, expected_size: int) -> None:
        tar = Path(scan.tar_path)
        if scan.identity[0] != expected_size:
            raise InputError(tar, f"changed while reshard was reading the pool ({expected_size} bytes at the start, "
                                  f"{scan.identity[0]} when scanned); rerun reshard")
        self.samples += scan.samples
        self.samples_without_uid += scan.samples_without_uid
        for kind, n in scan.skipped_kinds.items():
            self.skipped_kinds[kind if kind in self.skipped_kinds or len(self.skipped_kinds) < 32 else OTHER_KINDS] += n
        self.found_rows.append(scan.subset_rows)
        self.digests.append(scan.digest)
        self.identities.append(scan.identity)
        if _stats_successes(tar) not in (None, scan.samples):
            self.mismatched.append(tar.name)


# -------------------------------------------------------------------------------- the stage
def resolve_subset(ws: Workspace, value: str | None) -> Path:
    """A subset name (``subsets/{name}.npy``) or a path (workspace-relative first, then as given)."""
    if not value:
        raise ConfigError("reshard needs a subset: pass --subset NAME_OR_PATH (or 'reshard: {subset: ...}')")
    if "/" not in value and not value.endswith(".npy"):
        return ws.subset_path(check_name(value, "subset name"))
    path = Path(value).expanduser()
    if not path.is_absolute() and (ws.root / path).exists():
        return ws.root / path
    return path


def output_name(cfg: ReshardConfig, subset_path: Path) -> str:
    return check_name(cfg.name or subset_path.name.removesuffix(".npy"), "reshard output name")


def _check_config(cfg: ReshardConfig) -> None:
    if cfg.shard_size < 1:
        raise ConfigError(f"reshard.shard_size must be at least 1, got {cfg.shard_size}")
    if cfg.shuffle_bufsize < 0:
        raise ConfigError(f"reshard.shuffle_bufsize must be 0 (off) or more, got {cfg.shuffle_bufsize}")


def _settings(cfg: ReshardConfig) -> dict[str, int]:
    return {"shard_size": cfg.shard_size, "shuffle_bufsize": cfg.shuffle_bufsize, "seed": cfg.seed}


def reshard(ws: Workspace, cfg: ReshardConfig, runtime: Runtime, *, overwrite: bool = False) -> dict[str, Any]:
    """Copy the subset's samples out of ``ws``'s pool shards into ``filtered/{name}/``; return a summary.

    One reshard at a time writes an output folder (the workspace's writer's lock). The subset is read
    once and its exact bytes are what every task reads (``sample_ids.npy``, written first); if the
    subset file changes before the end, the run refuses to finish and removes what it wrote.
    """
    started = time.monotonic()
    _check_config(cfg)
    subset_path = resolve_subset(ws, cfg.subset)
    name = output_name(cfg, subset_path)
    out_dir = ws.filtered_dir(name)
    tars = ws.shard_tars()
    if not tars:
        raise InputError(ws.shards_dir, "no whole pool shards (a shard is whole when its _stats.json exists)")
    pool = _Pool(tars, [regular_file_size(t) for t in tars])  # a FIFO named like a shard stops here, unread
    snapshot = read_subset_snapshot(subset_path, allow_repeats=True)  # read once; its record must describe it
    with ws.lock(f"filtered/{name}"):
        pool.plan = fingerprint.plan_fingerprint(snapshot.sha256, tars, pool.sizes, _settings(cfg))
        pool.identity = fingerprint.pool_identity(tars)
        done = None if overwrite else complete(out_dir, pool.plan)
        if done is not None:
            if _pool_unchanged(ws, runtime, pool, done):
                return {**_summary_from_meta(done, out_dir), "shards_written": 0,
                        "shards_skipped": done["output_shard_count"], "bytes_written": 0,
                        "seconds": time.monotonic() - started}
            raise InputError(out_dir, "holds a reshard of this subset made from pool shards whose content has "
                                      "changed since; pass --overwrite to replace it")
        out_dir.mkdir(parents=True, exist_ok=True)
        return _reshard_locked(ws, cfg, runtime, overwrite, started, snapshot, out_dir, pool)


def _digest_cache(ws: Workspace) -> fingerprint.DigestCache:
    return fingerprint.DigestCache(ws.filtered_dir("x").parent / fingerprint.DIGESTS_NAME)


def _pool_unchanged(ws: Workspace, runtime: Runtime, pool: _Pool, meta: dict[str, Any]) -> bool:
    """Whether the pool's content is the one ``meta`` was made from (shards read only where touched)."""
    digests = fingerprint.current_digests(pool.tars, _digest_cache(ws), runtime)
    return fingerprint.pool_digest(pool.tars, pool.sizes, digests) == meta.get("pool_digest")


def _reshard_locked(ws: Workspace, cfg: ReshardConfig, runtime: Runtime, overwrite: bool, started: float,
                    snapshot: SubsetSnapshot, out_dir: Path, pool: _Pool) -> dict[str, Any]:
    subset_path, subset = snapshot.path, snapshot.pairs
    new_plan = not claim_output(out_dir, pool.plan, pool.identity, overwrite)  # else a partial run resumes
    write_json(out_dir / PLAN_NAME, {"plan": pool.plan, "pool_identity": pool.identity})
    snapshot.write_copy(out_dir / SUBSET_COPY_NAME)  # what the run reads: this copy, never the subset file
    with atomic_path(out_dir / KEYS_NAME) as tmp, open(tmp, "wb") as f:
        np.save(f, pairs_to_keys(subset))  # the same rows as 16-byte keys: the scans search these
    planner = OutputPlanner(out_dir, [str(t) for t in pool.tars], cfg.shard_size, cfg.shuffle_bufsize, cfg.seed,
                            subset_rows=len(subset))
    scan_units = [ScanUnit(str(t), str(out_dir / KEYS_NAME)) for t in pool.tars]
    submitted: list[WriteUnit] = []
    tally = _Tally()
    try:
        results, skipped = run_units(runtime, scan_units, planner, lambda i, scan: tally.add(scan, pool.sizes[i]),
                                     submitted)
        _check_unchanged(snapshot, out_dir)
    except BaseException:
        _roll_back(out_dir, submitted, new_plan)
        raise
    clear_output(out_dir, temp_only=True)  # temporaries of tasks lost with a worker and retried
    (out_dir / KEYS_NAME).unlink()
    cache = _digest_cache(ws)
    for tar, identity, digest in zip(pool.tars, tally.identities, tally.digests, strict=True):
        cache.put(tar.name, identity, digest)
    cache.save()

    uids = _uid_counts(subset, tally.found_rows)
    write_subset(out_dir / MISSING_NAME, uids["missing"])
    meta = _meta(ws, subset_path, subset, uids, tally, planner, cfg, pool)
    write_json(out_dir / META_NAME, meta)
    seconds = time.monotonic() - started
    written = sum(r["bytes"] for r in results)
    return {**_summary_from_meta(meta, out_dir), "shards_written": len(results),
            "shards_skipped": skipped, "bytes_written": written, "seconds": seconds,
            "missing_examples": pairs_to_uids(uids["missing"][:5])}


def _uid_counts(subset: np.ndarray, found_rows: list[np.ndarray]) -> dict[str, Any]:
    """Unique uids of the (sorted) subset, how many were found in the pool, and the missing ones (linear time:
    a uid's rows are adjacent, and each scan reports the first row of each uid it found)."""
    first = np.ones(len(subset), bool)
    first[1:] = subset[1:] != subset[:-1]
    found = np.zeros(len(subset), bool)
    for rows in found_rows:
        found[rows] = True
    return {"unique": int(first.sum()), "found": int((first & found).sum()),
            "missing": np.ascontiguousarray(subset[first & ~found], dtype=SUBSET_DTYPE)}


def _check_unchanged(snapshot: SubsetSnapshot, out_dir: Path) -> None:
    """Refuse to finish when the subset file is no longer the one this run read (replaced or rewritten)."""
    try:
        now = file_sha256(snapshot.path)
    except FileNotFoundError:
        now = "gone"
    if now != snapshot.sha256:
        raise InputError(snapshot.path, f"changed while reshard was reading it (sha256 {snapshot.sha256[:12]} at "
                                        f"the start, {now[:12]} now); nothing was finished in {out_dir}; rerun reshard")


# ------------------------------------------------------------------------------ scheduling
def _roll_back(out_dir: Path, units: list[WriteUnit], new_plan: bool) -> None:
    """After a failed run, remove the output shards it wrote, so bad input leaves no final names."""
    for unit in units:
        for path in (Path(unit.stats_path), Path(unit.tar_path)):
            path.unlink(missing_ok=True)
    clear_output(out_dir, temp_only=True)
    (out_dir / KEYS_NAME).unlink(missing_ok=True)
    if new_plan:
        (out_dir / PLAN_NAME).unlink(missing_ok=True)
        (out_dir / SUBSET_COPY_NAME).unlink(missing_ok=True)


def _meta(ws: Workspace, subset_path: Path, subset: np.ndarray, uids: dict[str, Any], tally: _Tally,
          planner: OutputPlanner, cfg: ReshardConfig, pool: _Pool) -> dict[str, Any]:
    return {
        "tool": TOOL,
        "output_shard_count": planner.shards_planned,
        "output_shard_format": OUTPUT_SHARD_FORMAT,
        "output_shard_stats_format": OUTPUT_STATS_FORMAT,
        "output_count": planner.copies_planned,
        "processed_count": tally.samples,
        "shard_size": cfg.shard_size,
        "shuffle_bufsize": cfg.shuffle_bufsize,
        "seed": cfg.seed,
        "input_dir": ws.rel(ws.shards_dir),
        "input_shards": len(pool.tars),
        "subset_file": ws.rel(subset_path),
        "subset_rows": int(len(subset)),
        "subset_unique_uids": uids["unique"],
        "found_unique_uids": uids["found"],
        "missing_unique_uids": len(uids["missing"]),
        "samples_without_uid": tally.samples_without_uid,
        "skipped_members": sum(tally.skipped_kinds.values()),
        "skipped_member_kinds": dict(sorted(tally.skipped_kinds.items())),
        "shards_with_count_mismatch": tally.mismatched,
        "config": asdict(cfg),
        "plan": pool.plan,
        "pool_digest": fingerprint.pool_digest(pool.tars, pool.sizes, tally.digests),
    }


def _stats_successes(tar: Path) -> int | None:
    stats = read_record(shard_stats_path(tar))
    value = stats.get("successes") if stats is not None else None
    return value if isinstance(value, int) else None


def _summary_from_meta(meta: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    keys = ("output_shard_count", "output_count", "processed_count", "subset_rows", "subset_unique_uids",
            "found_unique_uids", "missing_unique_uids", "samples_without_uid", "shards_with_count_mismatch",
            "skipped_member_kinds")
    return {"name": out_dir.name, "output_dir": str(out_dir), **{k: meta.get(k) for k in keys}}


# ----------------------------------------------------------------------------------- summary
def _kinds_line(kinds: dict[str, int]) -> str:
    top = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f".{k} x{n}" if not k.startswith("(") else f"{k} x{n}" for k, n in top[:8])
    return shown + (f", ... ({len(top) - 8} more kinds)" if len(top) > 8 else "") + \
        " (only images, txt, json, cls and npy members are copied; these were left out)"


def print_report(s: dict[str, Any]) -> None:
    """The one-screen summary of a reshard."""
    rate = s["bytes_written"] / 1e6 / max(s["seconds"], 1e-9)
    rows = [("output", s["output_dir"]),
            ("samples written", f"{s['output_count']} in {s['output_shard_count']} shards "
                                f"({s['shards_written']} written now, {s['shards_skipped']} already whole)"),
            ("pool samples scanned", s["processed_count"]),
            ("subset uids", f"{s['subset_unique_uids']} unique ({s['subset_rows']} rows); "
                            f"{s['found_unique_uids']} found, {s['missing_unique_uids']} not in the pool")]
    if s["missing_unique_uids"]:
        rows.append(("missing uids", f"{s['output_dir']}/{MISSING_NAME} (e.g. {', '.join(s.get('missing_examples', []))})"))
    if s["samples_without_uid"]:
        rows.append(("samples without uid", s["samples_without_uid"]))
    if s.get("skipped_member_kinds"):
        rows.append(("members not copied", _kinds_line(s["skipped_member_kinds"])))
    if s["shards_with_count_mismatch"]:
        rows.append(("stats mismatch", ", ".join(s["shards_with_count_mismatch"][:5])))
    rows.append(("time", f"{s['seconds']:.1f} s, {rate:,.0f} MB/s written"))
    print_summary("reshard", rows)


STAGE = Stage("reshard", ReshardConfig, run=reshard,
              report=print_report, reads=("shards/", "subsets/"), writes=("filtered/",), per_subset=True)
