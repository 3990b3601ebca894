"""Copy a uid subset out of the pool's shards into fixed-size training shards (DataComp's resharder layout).

Pass 1 (a Ray task per pool shard) reads the tar front to back in large blocks, parsing its headers
and each sample's ``.json`` (for its uid) from memory, and keeps the samples in the subset (sorted-array lookup); no image is decoded. The planner
(``plan.py``) gives every kept sample a global position (pool-shard order, then key order,
optionally a seeded shuffle buffer) and cuts output shards of ``shard_size``: every shard is full
but the last. Pass 2 (a Ray task per output shard) copies the members' raw bytes under new keys
``{uid}-{j}`` (DataComp's naming; a uid listed k times is written k times as ``-0 .. -(k-1)``) and
renames the shard into place when whole. On Ray an output shard is written as soon as the scans in
front of it are in, so writing overlaps scanning; the files are the same either way.

Output, in ``filtered/{name}/``: ``{:08d}.tar``, ``{:08d}_stats.json`` (``{"successes": n}``),
``meta.json`` (with DataComp's ``output_shard_count`` / ``output_shard_format``), ``sample_ids.npy``
(a copy of the subset file, written first: the tasks read this copy) and ``missing_uids.npy`` (subset
uids not found in the pool). One reshard at a time writes a folder (the writer's lock of
``filtered/{name}``); a subset file that changes before the end makes the run refuse to finish, and a
task lost with its Ray node is re-run elsewhere (``Runtime.remote``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import (
    atomic_path,
    file_sha256,
    filtered_shard_name,
    read_json,
    write_json,
    write_subset,
)
from poolsieve.core.progress import Progress, print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage, option
from poolsieve.core.subsets import SubsetSnapshot, read_subset_snapshot
from poolsieve.core.tar_io import (
    END_OF_ARCHIVE,
    Member,
    padding,
    read_tar,
    split_key,
    ustar_header,
    write_buffers,
)
from poolsieve.core.uids import SUBSET_DTYPE, is_valid_uid, pairs_to_uids, uids_to_pairs
from poolsieve.core.workspace import Workspace, is_whole_shard, shard_stats_path
from poolsieve.pipeline.reshard.plan import OutputPlanner, ShardScan, WriteUnit

PLAN_VERSION = 1
OUTPUT_SHARD_FORMAT = "{:08d}.tar"
OUTPUT_STATS_FORMAT = "{:08d}_stats.json"
SUBSET_COPY_NAME = "sample_ids.npy"
MISSING_NAME = "missing_uids.npy"
PLAN_NAME = ".reshard_plan.json"
WRITE_CHUNK_BYTES = 8 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ReshardConfig:
    """The ``reshard:`` section; each option is also a flag (``shard_size`` -> ``--shard-size``)."""

    subset: str | None = option(None, "subset name (subsets/NAME.npy) or path to a DataComp uid .npy file")
    name: str | None = option(None, "output folder under filtered/ (default: the subset file's name)")
    shard_size: int = option(10000, "samples per output shard (DataComp's)")
    shuffle_bufsize: int = option(0, "shuffle buffer in samples (0: pool order)")
    seed: int = option(0, "seed of the shuffle buffer")


# ------------------------------------------------------------------------------------ pass 1
@dataclass
class ScanUnit:
    tar_path: str
    subset_path: str


def _group_samples(members: list[Member]) -> tuple[list[tuple[str, dict]], int]:
    """Members grouped into samples by key, as webdataset groups them (consecutive names)."""
    samples: list[tuple[str, dict]] = []
    skipped = 0
    key: str | None = None
    fields: dict = {}
    for member in members:
        parts = split_key(member.name)
        if parts is None:
            skipped += 1
            continue
        member_key, ext = parts
        if member_key != key or ext in fields:
            if fields:
                samples.append((key, fields))
            key, fields = member_key, {}
        fields[ext] = member
    if fields:
        samples.append((key, fields))
    return samples, skipped


def _is_json(name: str) -> bool:
    return name[-5:].lower() == ".json"


def _uid_of(data: bytes | None) -> str | None:
    if data is None:  # larger than tar_io's CAPTURE_LIMIT: not an img2dataset record
        return None
    try:
        uid = json.loads(data.decode("utf-8")).get("uid")
    except (ValueError, AttributeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return uid if is_valid_uid(uid) else None


def scan_shard(unit: ScanUnit) -> ShardScan:
    """Pass 1: the samples of one pool tar whose uid is in the subset (a Ray task)."""
    tar_path = Path(unit.tar_path)
    subset = np.load(unit.subset_path, mmap_mode="r", allow_pickle=False)
    members, jsons = read_tar(tar_path, capture=_is_json)
    samples, skipped = _group_samples(members)
    scan = ShardScan(str(tar_path), samples=len(samples), skipped_members=skipped)
    with_uid: list[tuple[str, dict]] = []
    uid_strings: list[str] = []
    for key, fields in samples:
        uid = _uid_of(jsons.get(fields["json"].data_offset)) if "json" in fields else None
        if uid is None:
            scan.samples_without_uid += 1
            continue
        with_uid.append((key, fields))
        uid_strings.append(uid)
    if not with_uid or len(subset) == 0:
        return scan
    pairs = uids_to_pairs(uid_strings, source=tar_path)
    counts = np.searchsorted(subset, pairs, "right") - np.searchsorted(subset, pairs, "left")
    keep = np.flatnonzero(counts > 0)
    scan.uids = pairs[keep]
    scan.copies = counts[keep].astype(np.int64)
    starts, ends, mstarts, mcounts, offsets, sizes = [], [], [], [], [], []
    for i in keep.tolist():
        key, fields = with_uid[i]
        members = sorted(fields.items(), key=lambda kv: kv[1].data_offset)
        scan.keys.append(key)
        starts.append(members[0][1].data_offset)
        ends.append(members[-1][1].data_offset + members[-1][1].size)
        mstarts.append(len(offsets))
        mcounts.append(len(members))
        for ext, m in members:
            scan.member_ext.append(ext)
            offsets.append(m.data_offset)
            sizes.append(m.size)
    scan.span_start, scan.span_end = np.array(starts, np.int64), np.array(ends, np.int64)
    scan.member_start, scan.member_count = np.array(mstarts, np.int64), np.array(mcounts, np.int64)
    scan.member_offset, scan.member_size = np.array(offsets, np.int64), np.array(sizes, np.int64)
    return scan


# ------------------------------------------------------------------------------------ pass 2
def write_shard(unit: WriteUnit) -> dict[str, int]:
    """Pass 2: copy the unit's samples' raw member bytes into one output tar (a Ray task)."""
    fds: dict[int, int] = {}
    written = 0
    try:
        with atomic_path(unit.tar_path) as tmp, open(tmp, "wb", buffering=0) as out:
            chunks: list[Any] = []
            pending = 0
            for i, key in enumerate(unit.out_keys):
                s = int(unit.source[i])
                if s not in fds:
                    fds[s] = os.open(unit.sources[s], os.O_RDONLY)
                start, end = int(unit.span_start[i]), int(unit.span_end[i])
                span = os.pread(fds[s], end - start, start)
                if len(span) != end - start:
                    raise InputError(unit.sources[s], f"shrank while resharding: cannot read bytes {start}-{end}")
                view = memoryview(span)
                first, count = int(unit.member_start[i]), int(unit.member_count[i])
                for m in range(first, first + count):
                    offset, size = int(unit.member_offset[m]) - start, int(unit.member_size[m])
                    chunks += (ustar_header(f"{key}.{unit.member_ext[m]}", size), view[offset:offset + size],
                               padding(size))
                    pending += 512 + size
                if pending >= WRITE_CHUNK_BYTES:
                    written += write_buffers(out.fileno(), chunks)
                    chunks, pending = [], 0
            chunks.append(END_OF_ARCHIVE)
            written += write_buffers(out.fileno(), chunks)
    finally:
        for fd in fds.values():
            os.close(fd)
    write_json(unit.stats_path, {"successes": len(unit.out_keys), "bytes": written})
    return {"samples": len(unit.out_keys), "bytes": written}


# -------------------------------------------------------------------------------- the stage
def resolve_subset(ws: Workspace, value: str | None) -> Path:
    """A subset name (``subsets/{name}.npy``) or a path (workspace-relative first, then as given)."""
    if not value:
        raise ConfigError("reshard needs a subset: pass --subset NAME_OR_PATH (or 'reshard: {subset: ...}')")
    if "/" not in value and not value.endswith(".npy"):
        return ws.subset_path(value)
    path = Path(value).expanduser()
    if not path.is_absolute() and (ws.root / path).exists():
        return ws.root / path
    return path


def output_name(cfg: ReshardConfig, subset_path: Path) -> str:
    name = cfg.name or subset_path.name.removesuffix(".npy")
    if not _NAME_RE.match(name):
        raise ConfigError(f"reshard output name {name!r} must be letters, digits, '.', '_' or '-' (no paths)")
    return name


def _check_config(cfg: ReshardConfig) -> None:
    if cfg.shard_size < 1:
        raise ConfigError(f"reshard.shard_size must be at least 1, got {cfg.shard_size}")
    if cfg.shuffle_bufsize < 0:
        raise ConfigError(f"reshard.shuffle_bufsize must be 0 (off) or more, got {cfg.shuffle_bufsize}")


def plan_fingerprint(subset_sha256: str, tars: list[Path], cfg: ReshardConfig) -> str:
    """What the output depends on: subset bytes, pool shards (name, size, mtime) and the settings."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tars]
    doc = {"version": PLAN_VERSION, "subset_sha256": subset_sha256, "shards": stats,
           "shard_size": cfg.shard_size, "shuffle_bufsize": cfg.shuffle_bufsize, "seed": cfg.seed}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _is_output_file(name: str) -> bool:
    return (re.fullmatch(r"\d{8}(\.tar|_stats\.json)", name) is not None
            or name in ("meta.json", SUBSET_COPY_NAME, MISSING_NAME, PLAN_NAME)
            or (name.startswith(".") and name.endswith(".tmp")))


def clear_output(out_dir: Path, temp_only: bool = False) -> None:
    """Remove reshard's own files from ``out_dir`` (only temporaries when ``temp_only``)."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if p.is_file() and _is_output_file(p.name) and (not temp_only or p.name.endswith(".tmp")):
            p.unlink()


def _complete(out_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The meta.json of a finished reshard with this plan, if every shard it lists is whole."""
    meta_path = out_dir / "meta.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if meta.get("plan") != fingerprint:
        return None
    for i in range(int(meta.get("output_shard_count", 0))):
        name = filtered_shard_name(i)
        if not is_whole_shard(out_dir / f"{name}.tar"):
            return None
    return meta


def _claim_output(out_dir: Path, fingerprint: str, overwrite: bool) -> None:
    """Check that ``out_dir`` is empty or holds a partial run of the same plan (else --overwrite)."""
    if overwrite:
        clear_output(out_dir)
        return
    clear_output(out_dir, temp_only=True)
    plan_path = out_dir / PLAN_NAME
    leftovers = [p for p in out_dir.glob("*") if _is_output_file(p.name)] if out_dir.is_dir() else []
    if plan_path.exists():
        if read_json(plan_path).get("plan") != fingerprint:
            raise InputError(out_dir, "holds a reshard of a different subset, pool or settings; pass --overwrite to replace it")
    elif leftovers:
        raise InputError(out_dir, "holds files from an unknown reshard; pass --overwrite to replace them")


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
    snapshot = read_subset_snapshot(subset_path, allow_repeats=True)  # read once; its record must describe it
    with ws.lock(f"filtered/{name}"):
        fingerprint = plan_fingerprint(snapshot.sha256, tars, cfg)
        done = None if overwrite else _complete(out_dir, fingerprint)
        if done is not None:
            return {**_summary_from_meta(done, out_dir), "shards_written": 0,
                    "shards_skipped": done["output_shard_count"], "bytes_written": 0,
                    "seconds": time.monotonic() - started}
        out_dir.mkdir(parents=True, exist_ok=True)
        return _reshard_locked(ws, cfg, runtime, overwrite, started, snapshot, out_dir, tars, fingerprint)


def _reshard_locked(ws: Workspace, cfg: ReshardConfig, runtime: Runtime, overwrite: bool, started: float,
                    snapshot: SubsetSnapshot, out_dir: Path, tars: list[Path], fingerprint: str) -> dict[str, Any]:
    subset_path, subset = snapshot.path, snapshot.pairs
    _claim_output(out_dir, fingerprint, overwrite)
    new_plan = not (out_dir / PLAN_NAME).exists()
    write_json(out_dir / PLAN_NAME, {"plan": fingerprint})
    snapshot.write_copy(out_dir / SUBSET_COPY_NAME)  # the tasks read this copy, never the subset file
    planner = OutputPlanner(out_dir, [str(t) for t in tars], cfg.shard_size, cfg.shuffle_bufsize, cfg.seed)
    scan_units = [ScanUnit(str(t), str(out_dir / SUBSET_COPY_NAME)) for t in tars]
    submitted: list[WriteUnit] = []
    try:
        scans, results, skipped = _run_units(runtime, scan_units, planner, submitted)
        _check_unchanged(snapshot, out_dir)
    except BaseException:
        _roll_back(out_dir, submitted, new_plan)
        raise
    clear_output(out_dir, temp_only=True)  # temporaries of tasks lost with a worker and retried

    found = np.unique(np.concatenate([s.uids for s in scans])) if scans else np.empty(0, SUBSET_DTYPE)
    unique_subset = np.unique(subset)
    missing = np.setdiff1d(unique_subset, found)
    write_subset(out_dir / MISSING_NAME, missing.astype(SUBSET_DTYPE))
    meta = _meta(ws, subset_path, subset, unique_subset, found, missing, scans, planner, cfg, fingerprint)
    write_json(out_dir / "meta.json", meta)
    seconds = time.monotonic() - started
    written = sum(r["bytes"] for r in results)
    return {**_summary_from_meta(meta, out_dir), "shards_written": len(results),
            "shards_skipped": skipped, "bytes_written": written, "seconds": seconds,
            "missing_examples": pairs_to_uids(missing[:5])}


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
def _is_whole(unit: WriteUnit) -> bool:
    return Path(unit.tar_path).exists() and Path(unit.stats_path).exists()


def _roll_back(out_dir: Path, units: list[WriteUnit], new_plan: bool) -> None:
    """After a failed run, remove the output shards it wrote, so bad input leaves no final names."""
    for unit in units:
        for path in (Path(unit.stats_path), Path(unit.tar_path)):
            path.unlink(missing_ok=True)
    clear_output(out_dir, temp_only=True)
    if new_plan:
        (out_dir / PLAN_NAME).unlink(missing_ok=True)
        (out_dir / SUBSET_COPY_NAME).unlink(missing_ok=True)


def _run_units(runtime: Runtime, scan_units: list[ScanUnit], planner: OutputPlanner,
               submitted: list[WriteUnit]) -> tuple[list[ShardScan], list[dict], int]:
    """Scans and writes overlapped: scans come back in pool-shard order (``Runtime.ordered_map``) and an
    output shard is written (``Runtime.stream``) as soon as the scans in front of it are in, so the disk
    is busy while later pool shards are still being scanned. In-process the same, one unit at a time."""
    cpus = runtime.cpus()
    scan_progress = Progress("reshard scan", total=len(scan_units), unit="shards")
    write_progress = Progress("reshard write", total=None, unit="shards")
    scans: list[ShardScan] = []
    skipped = 0

    def write_units() -> Iterator[WriteUnit]:
        nonlocal skipped
        for scan in runtime.ordered_map(scan_shard, scan_units, max_in_flight=cpus):
            scans.append(scan)
            scan_progress.update(1, scan.samples)
            units = planner.add(scan) + (planner.finish() if len(scans) == len(scan_units) else [])
            for unit in units:
                if _is_whole(unit):
                    skipped += 1
                else:
                    submitted.append(unit)
                    yield unit

    with contextlib.closing(write_units()) as units:
        results = []
        for _, result in runtime.stream(write_shard, units, max_in_flight=cpus + 1):
            results.append(result)
            write_progress.update(1, result["samples"])
    if results:
        write_progress.close()
    return scans, results, skipped


def _meta(ws: Workspace, subset_path: Path, subset: np.ndarray, unique_subset: np.ndarray, found: np.ndarray,
          missing: np.ndarray, scans: list[ShardScan], planner: OutputPlanner, cfg: ReshardConfig,
          fingerprint: str) -> dict[str, Any]:
    mismatched = [Path(s.tar_path).name for s in scans if _stats_successes(Path(s.tar_path)) not in (None, s.samples)]
    return {
        "tool": "poolsieve reshard",
        "output_shard_count": planner.shards_planned,
        "output_shard_format": OUTPUT_SHARD_FORMAT,
        "output_shard_stats_format": OUTPUT_STATS_FORMAT,
        "output_count": planner.copies_planned,
        "processed_count": int(sum(s.samples for s in scans)),
        "shard_size": cfg.shard_size,
        "shuffle_bufsize": cfg.shuffle_bufsize,
        "seed": cfg.seed,
        "input_dir": ws.rel(ws.shards_dir),
        "input_shards": len(scans),
        "subset_file": ws.rel(subset_path),
        "subset_rows": int(len(subset)),
        "subset_unique_uids": int(len(unique_subset)),
        "found_unique_uids": int(len(found)),
        "missing_unique_uids": int(len(missing)),
        "samples_without_uid": int(sum(s.samples_without_uid for s in scans)),
        "skipped_members": int(sum(s.skipped_members for s in scans)),
        "shards_with_count_mismatch": mismatched,
        "config": asdict(cfg),
        "plan": fingerprint,
    }


def _stats_successes(tar: Path) -> int | None:
    try:
        value = json.loads(shard_stats_path(tar).read_text()).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def _summary_from_meta(meta: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    keys = ("output_shard_count", "output_count", "processed_count", "subset_rows", "subset_unique_uids",
            "found_unique_uids", "missing_unique_uids", "samples_without_uid", "shards_with_count_mismatch")
    return {"name": out_dir.name, "output_dir": str(out_dir), **{k: meta.get(k) for k in keys}}


# ----------------------------------------------------------------------------------- summary
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
    if s["shards_with_count_mismatch"]:
        rows.append(("stats mismatch", ", ".join(s["shards_with_count_mismatch"][:5])))
    phases = f" (scan {s['scan_seconds']:.1f} s, write {s['write_seconds']:.1f} s)" if "scan_seconds" in s else ""
    rows.append(("time", f"{s['seconds']:.1f} s{phases}, {rate:,.0f} MB/s written"))
    print_summary("reshard", rows)


STAGE = Stage("reshard", ReshardConfig, run=reshard,
              report=print_report, reads=("shards/", "subsets/"), writes=("filtered/",), per_subset=True)
