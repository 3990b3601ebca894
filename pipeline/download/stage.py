"""Fetch the pool's images into webdataset shards with img2dataset, dependably.

``poolsieve download`` turns ``metadata/*.parquet`` (CommonPool: uid, url, text, ...) into
``shards/{:05d}.tar|.parquet|_stats.json`` with DataComp's img2dataset settings (512 px,
keep_ratio_largest, jpg, 10,000 samples per shard, uid kept, face boxes blurred when present).

What it adds to a bare img2dataset call:

* img2dataset runs in a subprocess and writes into ``shards/.staging/``; a shard moves into
  ``shards/`` only once whole (tar, parquet, then ``_stats.json`` last), so ``shards/`` never holds a
  half-written file under its final name, and a rerun fetches only the shards that are missing;
* a watchdog stops the workers when no shard finishes within ``watchdog_seconds`` and reports which
  shards are missing instead of hanging;
* a network guard (``netguard``): only http and https urls on global addresses are fetched, through a
  proxy too; private, loopback, link-local, metadata, ... addresses are denied unless
  ``--allow-network`` opens them (the built-in pool's 127.0.0.1); refused urls are recorded as denied
  and never connected to;
* each fetch has a total deadline over the whole request (connect, headers, every redirect hop, body:
  ``core/fetch_clock.py``), recorded as ``deadline`` when it passes, and a size cap; images declaring huge
  sizes are refused undecoded;
* ``--retry-failed`` re-fetches only failed samples into new shards, made as the pool's shards were
  (samples per shard, image size and format as ``download_state.json`` records them, whatever flags
  are given), and keeps each uid in one place;
* ``shards/download_failures.parquet`` lists every failed sample with its reason and
  ``shards/download_report.json`` has success rate, failures by reason and throughput.

This module holds the order of the work; the rest of the package, one concern each: ``config.py``
(the options), ``plan.py`` (shard ids, whole shards), ``process.py`` (the runner subprocess, watchdog, promotion),
``runner.py`` (img2dataset inside it), ``netguard.py`` (with ``core/fetch_clock.py``, the per-url deadline),
``integrity.py`` (rows img2dataset dropped, the success-rate floor), ``failures.py`` (reasons, the
failures file, retry reconciliation), ``report.py``, ``hub_metadata.py`` (the metadata's source;
``core/metadata_checks.py`` checks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from poolsieve.core.errors import InputError, PoolsieveError
from poolsieve.core.formats import atomic_path, read_json, write_json
from poolsieve.core.locks import exclusive
from poolsieve.core.metadata_checks import check_metadata
from poolsieve.core.stage import Stage
from poolsieve.core.workspace import shard_stats_path, whole_shard_tars
from poolsieve.pipeline.download.config import DownloadConfig
from poolsieve.pipeline.download.failures import FAILURES_NAME, reconcile
from poolsieve.pipeline.download.hub_metadata import fetch_metadata
from poolsieve.pipeline.download.integrity import check_success_rate
from poolsieve.pipeline.download.plan import idle_workers_notice, plan_shards, shard_digits, whole_shard_ids
from poolsieve.pipeline.download.process import (
    RUNNER_LOG_NAME,
    STAGING_NAME,
    RunOutcome,
    clear_staging,
    default_processes,
    make_job,
    run_img2dataset,
)
from poolsieve.pipeline.download.report import REPORT_NAME, build_report, print_report, short_list

STATE_NAME = "download_state.json"
# what a download writes in shards/: img2dataset's NNNN.tar/.parquet/_stats.json and poolsieve's records
_OWN_SHARD_FILE = re.compile(r"\d+(\.tar|\.parquet|_stats\.json)")
_OWN_RECORDS = (STATE_NAME, REPORT_NAME, FAILURES_NAME, RUNNER_LOG_NAME)


def remove_own_files(shards_dir: Path) -> int:
    """Remove the files a download wrote in ``shards_dir`` (``--overwrite``): shard files and records, as
    regular files only (a symlink is removed, never followed); anything else a user put there stays."""
    removed = 0
    for entry in os.scandir(shards_dir):
        if entry.is_dir(follow_symlinks=False):
            continue
        if entry.name in _OWN_RECORDS or _OWN_SHARD_FILE.fullmatch(entry.name):
            os.unlink(entry.path)
            removed += 1
    return removed
# What makes a shard what it is: its layout and how its images were made. ``--retry-failed`` makes its
# shards with the values the pool's shards were made with (recorded in STATE_NAME), whatever is given.
SHARD_SETTINGS = ("samples_per_shard", "image_size", "resize_mode", "resize_only_if_bigger", "encode_format",
                  "encode_quality", "min_image_size", "blur_faces")
class DownloadStalled(PoolsieveError):
    """The watchdog stopped a download in which no shard finished for too long."""


# --------------------------------------------------------------------------------- the stage
def _distributor(cfg: DownloadConfig, runtime: Any) -> tuple[str, str | None]:
    choice = cfg.distributor
    if choice == "auto":
        choice = "ray" if getattr(runtime, "address", None) else "multiprocessing"
    if choice == "multiprocessing":
        return choice, None
    address = getattr(runtime, "address", None)
    if not address:  # a Ray started here for this run: pass its address to the runner
        ray = runtime.ensure_ray()
        address = ray.get_runtime_context().gcs_address
    return choice, address


def _bbox_column(files: list[Path], cfg: DownloadConfig) -> str | None:
    if not cfg.blur_faces:
        return None
    has = ["face_bboxes" in pq.read_schema(f).names for f in files]
    if any(has) and not all(has):
        bad = files[has.index(False)]
        raise InputError(bad, "has no face_bboxes column while other metadata files do; blur needs it in all")
    return "face_bboxes" if all(has) and has else None


def _check_state(shards_dir: Path, state: dict[str, Any], overwrite: bool) -> None:
    path = shards_dir / STATE_NAME
    if overwrite or not path.exists():
        return

    old = read_json(path)
    for key in ("samples_per_shard", "planned_shards"):
        if old.get(key) != state[key]:
            raise InputError(path, f"the shards were made with {key}={old.get(key)} but this run has "
                             f"{state[key]} (metadata or settings changed); use --overwrite to start again")


def recorded_settings(shards_dir: Path) -> dict[str, Any]:
    """The ``SHARD_SETTINGS`` the pool's shards were made with, as far as the download recorded them:
    ``download_state.json``'s ``shard_settings`` (written since this was added), else the settings of
    ``download_report.json`` and the state's ``samples_per_shard``; for a pool with neither, the shard
    size read off the shards' stats (a shard's count, plus rows a retry moved out, is at most the size,
    and the first shard of each metadata file is full unless the file is smaller)."""
    fields = {f.name: f for f in dataclasses.fields(DownloadConfig)}
    state_path, report_path = shards_dir / STATE_NAME, shards_dir / REPORT_NAME
    state = read_json(state_path) if state_path.exists() else {}
    found: dict[str, Any] = {}
    source = state_path
    if isinstance(state, dict) and isinstance(state.get("shard_settings"), dict):
        found = dict(state["shard_settings"])
    elif report_path.exists():
        report = read_json(report_path)
        settings = report.get("settings") if isinstance(report, dict) else None
        found, source = (dict(settings), report_path) if isinstance(settings, dict) else ({}, state_path)
    if isinstance(state, dict) and "samples_per_shard" in state:
        found["samples_per_shard"], source = state["samples_per_shard"], state_path
    if "samples_per_shard" not in found:
        sizes = [_original_count(tar) for tar in whole_shard_tars(shards_dir)]
        if sizes and max(sizes) > 0:
            found["samples_per_shard"] = max(sizes)
    out = {}
    for key in SHARD_SETTINGS:
        if key not in found:
            continue
        value, kind = found[key], type(fields[key].default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise InputError(source, f"records {key}={value!r}, not a {kind.__name__}; use --overwrite to start again")
        out[key] = value
    return out


def _original_count(tar: Path) -> int:
    """Rows a shard was made with: its count plus the rows a retry moved to later shards."""
    try:
        stats = json.loads(shard_stats_path(tar).read_text())
        return int(stats.get("count", 0)) + int(stats.get("moved_to_later_shards", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def settings_for_retry(shards_dir: Path, cfg: DownloadConfig) -> DownloadConfig:
    """``cfg`` with the settings the pool's shards were made with (a retry's shards are made the same
    way, in the same layout); says on stderr which given values it does not use."""
    recorded = recorded_settings(shards_dir)
    changed = {k: v for k, v in recorded.items() if getattr(cfg, k) != v}
    if not changed:
        return cfg
    print("download --retry-failed: making the retry shards as the pool's were made: "
          + ", ".join(f"{k}={v} (not {getattr(cfg, k)})" for k, v in changed.items()), file=sys.stderr, flush=True)
    cfg = dataclasses.replace(cfg, **changed)
    cfg.validate()
    return cfg


def download(ws: Any, cfg: DownloadConfig, runtime: Any, *, overwrite: bool = False) -> dict[str, Any]:
    """Fetch the workspace's metadata into whole shards; return the download report (a dict)."""
    cfg.validate()
    ws.root.mkdir(parents=True, exist_ok=True)
    with exclusive(ws.shards_dir):  # one download at a time per workspace (they would share the staging folder)
        return _download(ws, cfg, runtime, overwrite)


def _download(ws: Any, cfg: DownloadConfig, runtime: Any, overwrite: bool) -> dict[str, Any]:
    if cfg.scale or cfg.metadata_source:
        fetched = fetch_metadata(ws.metadata_dir, scale=cfg.scale, source=cfg.metadata_source,
                                 include_npz=cfg.download_npz, cache_dir=ws.hf_cache_dir, overwrite=overwrite,
                                 endpoint=cfg.hub_endpoint, drop_duplicate_uids=cfg.drop_duplicate_uids)
    files = ws.metadata_files()
    if not (cfg.scale or cfg.metadata_source) or fetched["skipped"]:  # fetch_metadata checks what it brings

        check_metadata(files, drop_duplicate_uids=cfg.drop_duplicate_uids)
    if cfg.skip_shards:
        return {"metadata_files": len(files), "skipped_shards": True}
    shards_dir = ws.shards_dir
    if cfg.retry_failed:
        cfg = settings_for_retry(shards_dir, cfg)
    plans = plan_shards(files, cfg.samples_per_shard)
    planned = sum(p.shards for p in plans)
    shards_dir.mkdir(parents=True, exist_ok=True)
    state = {"samples_per_shard": cfg.samples_per_shard, "planned_shards": planned,
             "metadata_files": [p.path.name for p in plans],
             "shard_settings": {k: getattr(cfg, k) for k in SHARD_SETTINGS}}
    _check_state(shards_dir, state, overwrite)
    staging = shards_dir / STAGING_NAME
    clear_staging(staging)  # leftovers of a killed run: partial tars are never promoted
    bbox_col = _bbox_column(files, cfg)
    distributor, address = _distributor(cfg, runtime)
    notice = idle_workers_notice(plans, cfg.samples_per_shard, cfg.processes or default_processes())
    fresh = not cfg.retry_failed and not whole_shard_ids(shards_dir)
    if notice and distributor == "multiprocessing" and fresh:  # said once, before the layout is fixed
        print(f"poolsieve download: note: {notice}", file=sys.stderr, flush=True)
    if overwrite and not cfg.retry_failed:
        remove_own_files(shards_dir)
    write_json(shards_dir / STATE_NAME, state)

    if cfg.retry_failed:
        mode = "retry_failed"
        outcome, expected = _retry_failed(ws, cfg, files, planned, bbox_col, distributor, address)
    else:
        done = whole_shard_ids(shards_dir)
        expected = [i for i in range(planned) if i not in done]
        digits = shard_digits(planned - 1)
        outcome, mode = None, "download"
        if expected:
            staging.mkdir(parents=True)
            job = make_job(ws, cfg, files, done & set(range(planned)), 0, bbox_col, digits, distributor, address)
            outcome = run_img2dataset(job, shards_dir, expected, cfg.watchdog_seconds)
    clear_staging(staging)
    report = build_report(ws, cfg, planned, mode, outcome, expected, distributor)
    write_json(shards_dir / REPORT_NAME, report)
    try:
        check_outcome(report, outcome, cfg, shards_dir)
    except PoolsieveError:
        print_report(report)  # the summary of the failed run, then its one-line error
        raise
    return report


def check_outcome(report: dict[str, Any], outcome: RunOutcome | None, cfg: DownloadConfig, shards_dir: Path) -> None:
    """Raise one line when the watchdog stopped the run, shards are missing or too few samples were fetched."""
    missing = report["missing_shards"]
    if outcome is not None and outcome.stalled:
        raise DownloadStalled(
            f"{shards_dir}: no shard finished within {cfg.watchdog_seconds:g}s; stopped the workers. "
            f"{len(missing)} shard(s) missing ({short_list(missing)}); see {REPORT_NAME}; rerun to resume")
    if missing:
        last = outcome.log_tail.splitlines()[-1] if outcome is not None and outcome.log_tail else ""
        raise PoolsieveError(f"{shards_dir}: {len(missing)} shard(s) did not finish ({short_list(missing)}); "
                             f"rerun to resume. img2dataset's log: {shards_dir / RUNNER_LOG_NAME}"
                             + (f" (last line: {last.strip()[:200]})" if last else ""))
    check_success_rate(report, cfg.min_success_rate, shards_dir)


def _retry_failed(ws: Any, cfg: DownloadConfig, files: list[Path], planned: int, bbox_col: str | None,
                  distributor: str, address: str | None) -> tuple[RunOutcome | None, list[int]]:
    """Re-fetch the failed (not denied) samples into new shards after the last one."""
    shards_dir = ws.shards_dir
    existing = whole_shard_ids(shards_dir)
    missing_planned = [i for i in range(planned) if i not in existing]
    if missing_planned:
        raise PoolsieveError(f"{shards_dir}: {len(missing_planned)} planned shard(s) are missing "
                             f"({short_list([str(i) for i in missing_planned])}); run `poolsieve download` "
                             "without --retry-failed first")
    failures = reconcile(shards_dir, planned)
    retry_uids = set(failures.loc[failures["reason"] != "denied", "uid"])
    if not retry_uids:
        return None, []
    columns = ["uid", "url", "text"] + ([bbox_col] if bbox_col else [])
    rows = []
    for f in files:
        df = pd.read_parquet(f, columns=columns)
        rows.append(df[df["uid"].isin(retry_uids)])
    retry_df = pd.concat(rows, ignore_index=True)
    staging = shards_dir / STAGING_NAME
    staging.mkdir(parents=True)
    retry_input = staging / "_input" / "retry.parquet"
    retry_input.parent.mkdir()
    with atomic_path(retry_input) as tmp:
        retry_df.to_parquet(tmp, index=False)
    start_id = max(existing) + 1
    count = math.ceil(len(retry_df) / cfg.samples_per_shard)
    expected = list(range(start_id, start_id + count))
    digits = shard_digits(expected[-1])
    job = make_job(ws, cfg, [retry_input], set(), start_id, bbox_col, digits, distributor, address)
    outcome = run_img2dataset(job, shards_dir, expected, cfg.watchdog_seconds, desc="retry failed")
    reconcile(shards_dir, planned)
    return outcome, expected


# --------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """DataComp's ``--skip_bbox_blurring`` (the negation of ``blur_faces``), for its command lines as they are."""
    p.add_argument("--skip_bbox_blurring", dest="blur_faces", action="store_false", default=None,
                   help="DataComp's spelling of --no-blur-faces")


STAGE = Stage("download", DownloadConfig,
              run=download, report=print_report, reads=("metadata/",), writes=("metadata/", "shards/"),
              creates_workspace=True)
