"""Running img2dataset in a subprocess under a watchdog, and moving its shards into place when whole.

``make_job`` writes down what the runner (``runner.py``) needs: inputs, shard ids to skip, staging folder,
network guard and img2dataset's settings. ``run_img2dataset`` starts the runner in a process group of its
own, promotes every shard img2dataset finishes from ``shards/.staging/`` into ``shards/`` (tar, parquet,
then ``_stats.json`` last), and kills the group when no shard finished within the watchdog's time, or
when every shard is whole but the runner hangs at its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poolsieve.core.progress import Progress
from poolsieve.pipeline.download.config import DownloadConfig
from poolsieve.pipeline.download.integrity import ShardInputs, complete_shard
from poolsieve.pipeline.download.plan import STATS_RE

STAGING_NAME = ".staging"
RUNNER_LOG_NAME = ".download_runner.log"
EXIT_GRACE_SECONDS = 30.0  # all shards whole but the runner still up (a hang at the end): stop it


# --------------------------------------------------------------------------------- staging & promotion
def promote_ready(staging: Path, shards_dir: Path,
                  inputs: ShardInputs | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Move every shard that img2dataset finished in ``staging`` into ``shards_dir``; stats file last.
    With ``inputs``, rows img2dataset failed to write are first added as failures (``complete_shard``)."""
    moved = []
    if not staging.is_dir():
        return moved
    for stats_path in sorted(staging.glob("*_stats.json")):
        m = STATS_RE.match(stats_path.name)
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


# --------------------------------------------------------------------------------- the job
def default_processes() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def img2dataset_settings(cfg: DownloadConfig, bbox_col: str | None, digits: int) -> dict[str, Any]:
    """img2dataset's keyword arguments for this config."""
    return {
        "image_size": cfg.image_size, "resize_mode": cfg.resize_mode,
        "resize_only_if_bigger": cfg.resize_only_if_bigger, "encode_format": cfg.encode_format,
        "encode_quality": cfg.encode_quality, "number_sample_per_shard": cfg.samples_per_shard,
        "processes_count": cfg.processes or default_processes(), "thread_count": cfg.threads,
        "retries": cfg.retries, "timeout": cfg.timeout, "min_image_size": cfg.min_image_size,
        "max_image_area": cfg.max_image_area, "oom_shard_count": digits, "bbox_col": bbox_col,
        "max_shard_retry": cfg.max_shard_retry, "user_agent_token": cfg.user_agent_token,
        "disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"],
    }


def make_job(ws: Any, cfg: DownloadConfig, inputs: list[Path], done: set[int], start_id: int,
             bbox_col: str | None, digits: int, distributor: str, address: str | None) -> dict[str, Any]:
    """The runner's job file: what to fetch, where, under which guard, with img2dataset's settings."""
    return {
        "staging": str(ws.shards_dir / STAGING_NAME), "inputs": [str(p) for p in inputs],
        "done_shards": sorted(done), "start_shard_id": start_id, "distributor": distributor,
        "ray_address": address, "deny_networks": list(cfg.deny_networks),
        "allow_networks": list(cfg.allow_networks), "fetch_deadline": cfg.fetch_deadline,
        "max_image_bytes": cfg.max_image_bytes, "parent_pid": os.getpid(),
        "img2dataset": img2dataset_settings(cfg, bbox_col, digits),
    }
