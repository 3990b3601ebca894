"""A killed download resumes to the same shards; a stalled one is stopped by the watchdog."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_download_support import (
    FAST,
    assert_shards_whole,
    make_served_pool,
    parquet_rows,
    processes_in_group,
    processes_mentioning,
    tar_uids,
)

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.runtime import Runtime
from poolsieve.pipeline.download.report import REPORT_NAME
from poolsieve.pipeline.download.stage import DownloadConfig, DownloadStalled, download

STAGE_SCRIPT = """
import sys
from poolsieve.pipeline.download.stage import DownloadConfig, download
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
download(Workspace.open(sys.argv[1]), DownloadConfig(samples_per_shard=10, image_size=64, processes=1, threads=2,
         timeout=5.0, retries=0, allow_networks=["127.0.0.1/32"]), Runtime(executor="local"))
"""


def _wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.mark.download
@pytest.mark.subprocess
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    pool = make_served_pool(tmp_path / "ws", n=100, per_file=50, latency=0.08)
    shards = pool.ws.shards_dir
    try:
        # The stage runs from a script on stdin: the runner subprocess makes that safe for img2dataset.
        stage = subprocess.Popen([sys.executable, "-", str(pool.ws.root)], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        stage.stdin.write(STAGE_SCRIPT)
        stage.stdin.close()
        assert _wait_for(lambda: len(list(shards.glob("*_stats.json"))) >= 2, timeout=90), "no shard finished"
        runner = processes_mentioning(str(shards / ".staging" / "_job.json"))
        assert len(runner) == 1
        with pytest.raises(PoolsieveError, match="another poolsieve process .* is writing it"):
            download(pool.ws, DownloadConfig(samples_per_shard=10, **FAST), Runtime(executor="local"))
        os.kill(stage.pid, signal.SIGKILL)
        stage.wait(timeout=10)
        # The runner and its workers die with the stage (no orphan keeps writing).
        assert _wait_for(lambda: not processes_in_group(runner[0]), timeout=15)
        done = len(list(shards.glob("*_stats.json")))
        assert 2 <= done < 10, "the kill should land mid-run"
        assert_shards_whole(shards)

        report = download(pool.ws, DownloadConfig(samples_per_shard=10, **FAST), Runtime(executor="local"))
        assert report["this_run"]["shards_done"] == 10 - done
        assert report["shards"] == 10 and report["successes"] == 100 and report["missing_shards"] == []
        in_tars = tar_uids(shards)
        assert set(in_tars) == set(pool.metadata["uid"]) and set(in_tars.values()) == {1}
        rows = parquet_rows(shards)
        assert rows["uid"].is_unique and len(rows) == 100
        assert_shards_whole(shards)
        assert not (shards / ".staging").exists()
    finally:
        pool.server.stop()


@pytest.mark.download
def test_watchdog_stops_a_stalled_download(tmp_path: Path) -> None:
    pool = make_served_pool(tmp_path / "ws", n=20, per_file=20)
    pool.server.set_faults({pool.path_of(u): "hang" for u in pool.metadata["uid"]})
    cfg = DownloadConfig(samples_per_shard=10, watchdog_seconds=25, **{**FAST, "processes": 1, "timeout": 120.0,
                                                                       "fetch_deadline": 300.0})
    shards = pool.ws.shards_dir
    try:
        t = time.monotonic()
        with pytest.raises(DownloadStalled, match=r"no shard finished within 25s.*2 shard\(s\) missing \(00000, 00001\)"):
            download(pool.ws, cfg, Runtime(executor="local"))
        assert time.monotonic() - t < 60
        assert pool.server.requests() > 0  # the workers were stuck on hanging requests when stopped
        report = json.loads((shards / REPORT_NAME).read_text())
        assert report["missing_shards"] == ["00000", "00001"] and report["this_run"]["stalled"] is True
        assert not list(shards.glob("*.tar")) and not (shards / ".staging").exists()
        assert not processes_mentioning(str(shards / ".staging"))
    finally:
        pool.server.stop()
