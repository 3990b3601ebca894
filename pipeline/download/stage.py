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
* each fetch has a total deadline and a size cap; images declaring huge sizes are refused undecoded;
* ``--retry-failed`` re-fetches only failed samples into new shards and keeps each uid in one place;
* ``shards/download_failures.parquet`` lists every failed sample with its reason and
  ``shards/download_report.json`` has success rate, failures by reason and throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError, InputError, PoolsieveError
from poolsieve.core.locks import exclusive
from poolsieve.core.stage import Stage, option
from poolsieve.pipeline.download.hub_metadata import SCALES
from poolsieve.pipeline.download.integrity import (
    NOT_WRITTEN_STATUS,
    ShardInputs,
    check_success_rate,
    complete_shard,
)
from poolsieve.pipeline.download.netguard import DENIED_MARK, NetworkPolicy

REPORT_NAME = "download_report.json"
FAILURES_NAME = "download_failures.parquet"
STATE_NAME = "download_state.json"
STAGING_NAME = ".staging"
RUNNER_LOG_NAME = ".download_runner.log"
SCALE_NAMES = tuple(SCALES)
RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
DISTRIBUTORS = ("auto", "multiprocessing", "ray")
ENCODE_FORMATS = ("jpg", "png", "webp")
_STATS_RE = re.compile(r"^(\d+)_stats\.json$")
EXIT_GRACE_SECONDS = 30.0  # all shards whole but the runner still up (a hang at the end): stop it


class DownloadStalled(PoolsieveError):
    """The watchdog stopped a download in which no shard finished for too long."""


@dataclass
class DownloadConfig:
    """The ``download:`` section; each option is also a flag. Defaults follow DataComp's ``download_upstream.py``;
    img2dataset's and DataComp's own flag spellings (``--processes_count``, ``--download_npz``, ...) work too."""

    metadata_source: str | None = option(
        None, "a local folder of metadata parquets (and .npz) to copy into metadata/ (DataComp's --metadata_dir "
        "when it already holds them)", metavar="DIR",
        aliases=("--metadata_dir",))
    scale: str | None = option(None, "fetch DataComp's metadata for this scale from the Hugging Face hub first",
                               choices=SCALE_NAMES)
    download_npz: bool = option(False, "with --scale: also fetch the .npz embeddings", aliases=("--download_npz",))
    hub_endpoint: str | None = option(None, "a Hugging Face hub mirror (default: HF_ENDPOINT or huggingface.co)",
                                      metavar="URL")
    skip_shards: bool = option(False, "fetch the metadata only", aliases=("--skip_shards",))
    image_size: int = option(512, "resize the images' longest side to this", aliases=("--image_size",))
    resize_mode: str = option("keep_ratio_largest", "img2dataset resize mode", choices=RESIZE_MODES,
                              aliases=("--resize_mode",))
    resize_only_if_bigger: bool = option(True, "never upscale small images (on, as in DataComp)",
                                         aliases=("--resize_only_if_bigger",))
    encode_format: str = option("jpg", "image format in the shards", choices=ENCODE_FORMATS,
                                aliases=("--encode_format",))
    encode_quality: int = option(95, "JPEG/WebP quality of the stored images", aliases=("--encode_quality",))
    samples_per_shard: int = option(10_000, "samples per shard", aliases=("--number_sample_per_shard",))
    processes: int | None = option(None, "download processes (default: all CPUs)", aliases=("--processes_count",))
    threads: int = option(32, "fetch threads per process; up to 2 x threads fetched images of at most "
                          "max_image_bytes wait per process (2 GiB with the defaults)", aliases=("--thread_count",))
    retries: int = option(2, "retries per url inside img2dataset")
    timeout: float = option(10.0, "seconds per connect / read")
    fetch_deadline: float = option(60.0, "seconds one image may take in all (slow trickles end here)")
    max_image_bytes: int = option(32 << 20, "bytes one image may have; larger ones are refused", metavar="BYTES")
    max_image_area: float = option(
        64 << 20, "refuse images whose header declares more pixels, before decoding (8192^2; with transparency a "
        "sixth). Each process decodes one image at a time, in at most ~12 bytes x this: peak decode memory "
        "<= processes x 12 B x max_image_area", metavar="PIXELS", aliases=("--max_image_area",))
    min_image_size: int = option(0, "refuse images whose shorter side is smaller than this",
                                 aliases=("--min_image_size",))
    blur_faces: bool = option(True, "blur face_bboxes when the metadata has them (--no-blur-faces: keep them)")
    deny_networks: list[str] = option(
        [], "never fetch from this network (repeatable; adds to the default: every non-global address)",
        flag="--deny-network", metavar="CIDR")
    allow_networks: list[str] = option(
        [], "fetch from this otherwise denied network, e.g. 127.0.0.1/32 for a local server (repeatable)",
        flag="--allow-network", metavar="CIDR")
    distributor: str = option("auto", "auto: ray with --ray-address, else img2dataset's multiprocessing",
                              choices=DISTRIBUTORS)
    watchdog_seconds: float = option(1800.0, "stop the workers when no shard finished for this long")
    max_shard_retry: int = option(1, "img2dataset's re-runs of a shard that failed as a whole",
                                  aliases=("--max_shard_retry",))
    retry_failed: bool = option(False, "re-fetch only the failed samples into new shards")
    user_agent_token: str | None = option(None, "added to img2dataset's user agent", aliases=("--user_agent_token",))
    min_success_rate: float = option(
        0.1, "fail (exit 2) when fewer than this fraction of the samples were fetched (a dead server, a pool "
        "the network guard refuses)", metavar="RATE")
    drop_duplicate_uids: bool = option(False, "drop metadata rows whose uid repeats an earlier row "
                                       "(default: refuse the file)")

    def validate(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"download.resize_mode: {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.distributor not in DISTRIBUTORS:
            raise ConfigError(f"download.distributor: {self.distributor!r} is not one of {', '.join(DISTRIBUTORS)}")
        for name in ("image_size", "samples_per_shard", "threads", "timeout", "fetch_deadline", "watchdog_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"download.{name} must be positive, got {getattr(self, name)!r}")
        if self.processes is not None and self.processes <= 0:
            raise ConfigError(f"download.processes must be positive, got {self.processes!r}")
        if not 0 <= self.min_success_rate <= 1:
            raise ConfigError(f"download.min_success_rate must be between 0 and 1, got {self.min_success_rate!r}")
        if self.max_image_area <= 0 or self.max_image_bytes <= 0:
            raise ConfigError("download.max_image_area and download.max_image_bytes must be positive")
        for key in ("deny_networks", "allow_networks"):
            if not isinstance(getattr(self, key), list):
                raise ConfigError(f"download.{key} must be a list of networks (CIDR strings)")
        NetworkPolicy(self.deny_networks, self.allow_networks)  # a bad CIDR stops here, in one line


# --------------------------------------------------------------------------------- failures
def failure_reason(status: str | None, error: str | None) -> str:
    """A short reason for a failed sample: http_404, timeout, decode, too_small, denied, ..."""
    if status == "success":
        return "success"
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
    if "deadline exceeded" in msg:
        return "slow_transfer"
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


# --------------------------------------------------------------------------------- planning
@dataclass
class FilePlan:
    path: Path
    rows: int
    first_shard: int
    shards: int


def plan_shards(files: list[Path], per_shard: int) -> list[FilePlan]:
    """img2dataset's sharding: each file is cut into ceil(rows / per_shard) shards, ids run on."""
    import pyarrow.parquet as pq

    from poolsieve.core.formats import check_metadata_columns

    plans, next_id = [], 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
            names = pq.read_schema(f).names
        except Exception as e:  # noqa: BLE001
            raise InputError(f, f"not a readable parquet file ({e})") from None
        check_metadata_columns(f, names)
        n = math.ceil(meta.num_rows / per_shard)
        plans.append(FilePlan(f, meta.num_rows, next_id, n))
        next_id += n
    return plans


def shard_digits(max_id: int) -> int:
    return max(5, len(str(max(max_id, 0))))


def whole_shards(shards_dir: Path) -> dict[int, str]:
    """Shard id -> name of the shards whose tar and ``_stats.json`` are in ``shards/`` (stats move last)."""
    if not shards_dir.is_dir():
        return {}
    names = {p.name for p in shards_dir.iterdir()}
    out = {}
    for name in names:
        m = _STATS_RE.match(name)
        if m and f"{m.group(1)}.tar" in names:
            out[int(m.group(1))] = m.group(1)
    return out


def whole_shard_ids(shards_dir: Path) -> set[int]:
    return set(whole_shards(shards_dir))


# --------------------------------------------------------------------------------- staging & promotion
def promote_ready(staging: Path, shards_dir: Path,
                  inputs: ShardInputs | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Move every shard that img2dataset finished in ``staging`` into ``shards_dir``; stats file last.
    With ``inputs``, rows img2dataset failed to write are first added as failures (``complete_shard``)."""
    moved = []
    if not staging.is_dir():
        return moved
    for stats_path in sorted(staging.glob("*_stats.json")):
        m = _STATS_RE.match(stats_path.name)
        if not m:
            continue
        try:
            stats = json.loads(stats_path.read_text())
            int(stats["count"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # still being written: next round
        name = m.group(1)
        tar, parquet = staging / f"{name}.tar", staging / f"{name}.parquet"
        if not parquet.exists() or not tar.exists():
            continue
        if inputs is not None and complete_shard(parquet, stats_path, int(name), inputs):
            stats = json.loads(stats_path.read_text())
        os.replace(tar, shards_dir / tar.name)
        os.replace(parquet, shards_dir / parquet.name)
        os.replace(stats_path, shards_dir / stats_path.name)
        moved.append((int(name), stats))
    return moved


def clear_staging(staging: Path) -> None:
    if staging.exists():
        shutil.rmtree(staging)


@dataclass
class RunOutcome:
    promoted: list[int]
    samples: int
    seconds: float
    stalled: bool
    returncode: int | None
    log_tail: str


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def run_img2dataset(job: dict[str, Any], shards_dir: Path, expected: list[int], watchdog_seconds: float,
                    desc: str = "download") -> RunOutcome:
    """Run the job in a subprocess, promote shards as they finish, stop it if it stalls."""
    from poolsieve.core.progress import Progress

    staging = Path(job["staging"])
    job_path = staging / "_job.json"
    job_path.write_text(json.dumps(job))
    log_path = shards_dir / RUNNER_LOG_NAME
    print(f"{desc}: {len(expected)} shard(s) to fetch with img2dataset ({job['distributor']}); "
          f"starting workers (log: {log_path})", file=sys.stderr, flush=True)
    progress = Progress(desc, total=len(expected), unit="shards")
    promoted: list[int] = []
    samples = 0
    start = last_progress = time.monotonic()
    stalled = False
    all_done_at: float | None = None
    waiting_for = set(expected)
    inputs = ShardInputs.from_job(job)
    # OpenCV's own pixel limit, read at import: a second stop, for any format, before it allocates.
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_ALBUMENTATIONS_UPDATE="1",
               OPENCV_IO_MAX_IMAGE_PIXELS=str(int(job["img2dataset"]["max_image_area"])))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "poolsieve.pipeline.download.runner", str(job_path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        try:
            while True:
                returncode = proc.poll()
                for shard_id, stats in promote_ready(staging, shards_dir, inputs):
                    promoted.append(shard_id)
                    samples += int(stats["count"])
                    progress.update(1, items=int(stats["count"]))
                    last_progress = time.monotonic()
                    waiting_for.discard(shard_id)
                if returncode is not None:
                    break
                if not waiting_for:
                    all_done_at = all_done_at or time.monotonic()
                    if time.monotonic() - all_done_at > EXIT_GRACE_SECONDS:
                        _kill_group(proc)  # every shard is whole: a runner that hangs at the end is stopped
                        break
                elif time.monotonic() - last_progress > watchdog_seconds:
                    stalled = True
                    _kill_group(proc)
                    break
                time.sleep(0.25)
        except BaseException:
            _kill_group(proc)
            raise
    returncode = proc.returncode
    _kill_group(proc)  # any worker left behind in the group
    progress.close()
    return RunOutcome(promoted, samples, time.monotonic() - start, stalled, returncode, _log_tail(log_path))


# --------------------------------------------------------------------------------- reading results
def _shard_parquets(shards_dir: Path) -> list[tuple[int, Path]]:
    """(id, parquet) of the whole shards, by id."""
    return [(i, shards_dir / f"{name}.parquet") for i, name in sorted(whole_shards(shards_dir).items())]


FAILURE_COLUMNS = ("uid", "shard", "url", "caption", "key", "status", "error_message", "reason")
_COVER_KEY = b"poolsieve_shards_covered"


def collect_failures(shards_dir: Path, only: set[int] | None = None):
    """Failed samples of the whole shards (or of the ids in ``only``), with shard and reason (pandas)."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    cols = ["uid", "url", "caption", "key", "status", "error_message"]
    for shard_id, path in _shard_parquets(shards_dir) if only is None or only else []:
        if only is not None and shard_id not in only:
            continue
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in cols if c in names]).to_pandas()
        bad = table[table["status"] != "success"].copy()
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
    import pyarrow.parquet as pq

    path = shards_dir / FAILURES_NAME
    if not path.exists():
        return collect_failures(shards_dir, only=set()), set()
    table = pq.read_table(path)
    cover = json.loads((table.schema.metadata or {}).get(_COVER_KEY, b"[]"))
    return table.to_pandas(), {i for a, b in cover for i in range(a, b + 1)}


def update_failures(shards_dir: Path, rewritten: set[int] = frozenset()):
    """Bring ``download_failures.parquet`` up to date, reading only the shards it does not cover yet
    (and ``rewritten`` ones). Returns the failures of all whole shards."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from poolsieve.core.formats import atomic_path

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
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from poolsieve.core.formats import atomic_path, write_json

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
        drop = [latest[u] != shard_id and s != "success" for u, s in zip(uids, status, strict=True)]
        if not any(drop):
            continue
        parquet_path = parquets[shard_id]
        stats_path = parquet_path.with_name(f"{parquet_path.stem}_stats.json")
        full = pq.read_table(parquet_path)
        keep = full.filter(pc.invert(pc.is_in(full.column("uid"), value_set=_pa_array(
            [u for u, d in zip(uids, drop, strict=True) if d]))))
        with atomic_path(parquet_path) as tmp:
            pq.write_table(keep, tmp)
        stats = json.loads(stats_path.read_text())
        kept_status = keep.column("status").to_pylist()
        kept_errors = keep.column("error_message").to_pylist()
        status_dict = Counter("success" if s == "success" else (e or s) for s, e in zip(kept_status, kept_errors,
                                                                                          strict=True))
        stats.update(count=len(kept_status), successes=kept_status.count("success"),
                     failed_to_download=kept_status.count("failed_to_download"),
                     failed_to_resize=kept_status.count("failed_to_resize"), status_dict=dict(status_dict),
                     failed_to_write=kept_status.count(NOT_WRITTEN_STATUS),
                     moved_to_later_shards=int(stats.get("moved_to_later_shards", 0)) + sum(drop))
        write_json(stats_path, stats)
        rewritten.add(shard_id)
    return rewritten


def _pa_array(values: list[str]):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


# --------------------------------------------------------------------------------- the stage
def _default_processes() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def _img2dataset_settings(cfg: DownloadConfig, bbox_col: str | None, digits: int) -> dict[str, Any]:
    return {
        "image_size": cfg.image_size, "resize_mode": cfg.resize_mode,
        "resize_only_if_bigger": cfg.resize_only_if_bigger, "encode_format": cfg.encode_format,
        "encode_quality": cfg.encode_quality, "number_sample_per_shard": cfg.samples_per_shard,
        "processes_count": cfg.processes or _default_processes(), "thread_count": cfg.threads,
        "retries": cfg.retries, "timeout": cfg.timeout, "min_image_size": cfg.min_image_size,
        "max_image_area": cfg.max_image_area, "oom_shard_count": digits, "bbox_col": bbox_col,
        "max_shard_retry": cfg.max_shard_retry, "user_agent_token": cfg.user_agent_token,
        "disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"],
    }


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
    import pyarrow.parquet as pq

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
    from poolsieve.core.formats import read_json

    old = read_json(path)
    for key in ("samples_per_shard", "planned_shards"):
        if old.get(key) != state[key]:
            raise InputError(path, f"the shards were made with {key}={old.get(key)} but this run has "
                             f"{state[key]} (metadata or settings changed); use --overwrite to start again")


def _job(ws: Any, cfg: DownloadConfig, inputs: list[Path], done: set[int], start_id: int,
         bbox_col: str | None, digits: int, distributor: str, address: str | None) -> dict[str, Any]:
    return {
        "staging": str(ws.shards_dir / STAGING_NAME), "inputs": [str(p) for p in inputs],
        "done_shards": sorted(done), "start_shard_id": start_id, "distributor": distributor,
        "ray_address": address, "deny_networks": list(cfg.deny_networks),
        "allow_networks": list(cfg.allow_networks), "fetch_deadline": cfg.fetch_deadline,
        "max_image_bytes": cfg.max_image_bytes, "parent_pid": os.getpid(),
        "img2dataset": _img2dataset_settings(cfg, bbox_col, digits),
    }


def download(ws: Any, cfg: DownloadConfig, runtime: Any, *, overwrite: bool = False) -> dict[str, Any]:
    """Fetch the workspace's metadata into whole shards; return the download report (a dict)."""
    cfg.validate()
    ws.root.mkdir(parents=True, exist_ok=True)
    with exclusive(ws.shards_dir):  # one download at a time per workspace (they would share the staging folder)
        return _download(ws, cfg, runtime, overwrite)


def _download(ws: Any, cfg: DownloadConfig, runtime: Any, overwrite: bool) -> dict[str, Any]:
    from poolsieve.core.formats import write_json

    if cfg.scale or cfg.metadata_source:
        from poolsieve.pipeline.download.hub_metadata import fetch_metadata

        fetched = fetch_metadata(ws.metadata_dir, scale=cfg.scale, source=cfg.metadata_source,
                                 include_npz=cfg.download_npz, cache_dir=ws.root / ".hf_cache", overwrite=overwrite,
                                 endpoint=cfg.hub_endpoint, drop_duplicate_uids=cfg.drop_duplicate_uids)
    files = ws.metadata_files()
    if not (cfg.scale or cfg.metadata_source) or fetched["skipped"]:  # fetch_metadata checks what it brings
        from poolsieve.pipeline.download.metadata_checks import check_metadata

        check_metadata(files, drop_duplicate_uids=cfg.drop_duplicate_uids)
    if cfg.skip_shards:
        return {"metadata_files": len(files), "skipped_shards": True}
    plans = plan_shards(files, cfg.samples_per_shard)
    planned = sum(p.shards for p in plans)
    shards_dir = ws.shards_dir
    shards_dir.mkdir(parents=True, exist_ok=True)
    state = {"samples_per_shard": cfg.samples_per_shard, "planned_shards": planned,
             "metadata_files": [p.path.name for p in plans]}
    _check_state(shards_dir, state, overwrite)
    staging = shards_dir / STAGING_NAME
    clear_staging(staging)  # leftovers of a killed run: partial tars are never promoted
    bbox_col = _bbox_column(files, cfg)
    distributor, address = _distributor(cfg, runtime)
    if overwrite and not cfg.retry_failed:
        for p in list(shards_dir.iterdir()):
            if p.is_file():
                p.unlink()
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
            job = _job(ws, cfg, files, done & set(range(planned)), 0, bbox_col, digits, distributor, address)
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
            f"{len(missing)} shard(s) missing ({_short_list(missing)}); see {REPORT_NAME}; rerun to resume")
    if missing:
        last = outcome.log_tail.splitlines()[-1] if outcome is not None and outcome.log_tail else ""
        raise PoolsieveError(f"{shards_dir}: {len(missing)} shard(s) did not finish ({_short_list(missing)}); "
                             f"rerun to resume. img2dataset's log: {shards_dir / RUNNER_LOG_NAME}"
                             + (f" (last line: {last.strip()[:200]})" if last else ""))
    check_success_rate(report, cfg.min_success_rate, shards_dir)


def _short_list(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _retry_failed(ws: Any, cfg: DownloadConfig, files: list[Path], planned: int, bbox_col: str | None,
                  distributor: str, address: str | None) -> tuple[RunOutcome | None, list[int]]:
    """Re-fetch the failed (not denied) samples into new shards after the last one."""
    import pandas as pd

    from poolsieve.core.formats import atomic_path

    shards_dir = ws.shards_dir
    existing = whole_shard_ids(shards_dir)
    missing_planned = [i for i in range(planned) if i not in existing]
    if missing_planned:
        raise PoolsieveError(f"{shards_dir}: {len(missing_planned)} planned shard(s) are missing "
                             f"({_short_list([str(i) for i in missing_planned])}); run `poolsieve download` "
                             "without --retry-failed first")
    failures = _reconcile(shards_dir, planned)
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
    job = _job(ws, cfg, [retry_input], set(), start_id, bbox_col, digits, distributor, address)
    outcome = run_img2dataset(job, shards_dir, expected, cfg.watchdog_seconds, desc="retry failed")
    _reconcile(shards_dir, planned)
    return outcome, expected


def _reconcile(shards_dir: Path, planned: int):
    """Drop superseded failure rows (see ``reconcile_duplicates``); return the up-to-date failures."""
    failures = update_failures(shards_dir)
    candidates = set(failures["shard"].astype(int)) | {i for i in whole_shard_ids(shards_dir) if i >= planned}
    rewritten = reconcile_duplicates(shards_dir, candidates)
    return update_failures(shards_dir, rewritten) if rewritten else failures


# --------------------------------------------------------------------------------- report
def build_report(ws: Any, cfg: DownloadConfig, planned: int, mode: str, outcome: RunOutcome | None,
                 expected: list[int], distributor: str) -> dict[str, Any]:
    shards_dir = ws.shards_dir
    whole_names = whole_shards(shards_dir)
    whole = set(whole_names)
    samples = successes = 0
    for name in whole_names.values():
        stats = json.loads((shards_dir / f"{name}_stats.json").read_text())
        samples += int(stats.get("count", 0))
        successes += int(stats.get("successes", 0))
    failures = update_failures(shards_dir)
    by_reason = dict(sorted(Counter(failures["reason"]).items(), key=lambda kv: (-kv[1], kv[0])))
    denied = by_reason.get("denied", 0)
    missing = sorted((set(range(planned)) | set(expected)) - whole)
    digits = shard_digits(max([planned - 1, *expected]) if expected else planned - 1)
    run: dict[str, Any] = {"mode": mode, "distributor": distributor, "shards_planned": len(expected)}
    if outcome is not None:
        run.update(shards_done=len(outcome.promoted), samples=outcome.samples, seconds=round(outcome.seconds, 3),
                   samples_per_s=round(outcome.samples / outcome.seconds, 2) if outcome.seconds > 0 else None,
                   stalled=outcome.stalled, runner_exit_code=outcome.returncode)
    else:
        run.update(shards_done=0, samples=0, seconds=0.0, samples_per_s=None, stalled=False)
    return {
        "shards": len(whole),
        "planned_shards": planned,
        "missing_shards": [f"{i:0{digits}d}" for i in missing],
        "samples": samples,
        "successes": successes,
        "success_rate": round(successes / samples, 6) if samples else None,
        "denied": denied,
        "success_rate_excluding_denied": round(successes / (samples - denied), 6) if samples > denied else None,
        "failures": int(len(failures)),
        "failures_by_reason": by_reason,
        "this_run": run,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("metadata_source",)},
    }


def print_report(report: dict[str, Any]) -> None:
    """The one-screen summary of a download."""
    from poolsieve.core.progress import print_summary

    if report.get("skipped_shards"):
        print_summary("download", [("metadata files", report["metadata_files"]), ("shards", "skipped (--skip-shards)")])
        return
    run = report["this_run"]
    rate = run.get("samples_per_s")
    rows = [
        ("shards", f"{report['shards']} whole of {report['planned_shards']} planned"
         + (f" (+ {report['shards'] - report['planned_shards']} retry)" if report["shards"] > report["planned_shards"] else "")),
        ("samples", report["samples"]),
        ("success rate", "n/a" if report["success_rate"] is None else f"{report['success_rate']:.2%}"
         + (f" ({report['success_rate_excluding_denied']:.2%} of the not denied)"
            if report["success_rate_excluding_denied"] is not None and report["denied"] else
            " (every sample denied by the network guard: see --allow-network)" if report["denied"] else "")),
        ("failures", ", ".join(f"{k}={v}" for k, v in report["failures_by_reason"].items()) or "none"),
        ("this run", f"{run['mode']}: {run['shards_done']} shards, {run['samples']} samples in {run['seconds']}s"
         + (f" ({rate:,.1f} samples/s)" if rate else "") if run["shards_planned"] else
         f"{run['mode']}: nothing to do" + (" (every shard is whole)" if run["mode"] == "download" else
                                             " (no failed sample to retry)")),
    ]
    if report["missing_shards"]:
        rows.append(("missing shards", _short_list(report["missing_shards"])))
    print_summary("download", rows)


# --------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """DataComp's ``--skip_bbox_blurring`` (the negation of ``blur_faces``), for its command lines as they are."""
    p.add_argument("--skip_bbox_blurring", dest="blur_faces", action="store_false", default=None,
                   help="DataComp's spelling of --no-blur-faces")


STAGE = Stage("download", "fetch the pool's images into webdataset shards with img2dataset", DownloadConfig,
              run=download, report=print_report, reads=("metadata/",), writes=("metadata/", "shards/"),
              creates_workspace=True)
