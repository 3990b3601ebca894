"""What the download does with a runner's output, in this process: a shard img2dataset finished in
``shards/.staging`` is completed (rows its writer dropped become recorded failures), promoted stats last,
counted in the report, and a run that fetched too little, stalled or left shards missing ends in one line.
The runner itself (img2dataset in a child process) is exercised by the ``download``-marked tests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from factories import make_samples

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.download.config import DownloadConfig
from poolsieve.pipeline.download.integrity import NOT_WRITTEN_STATUS, ShardInputs, sample_key
from poolsieve.pipeline.download.process import STAGING_NAME, RunOutcome, make_job, promote_ready
from poolsieve.pipeline.download.report import build_report, print_report
from poolsieve.pipeline.download.stage import DownloadStalled, check_outcome

PER_SHARD = 10


def metadata(ws: Workspace, n: int) -> Path:
    samples = make_samples(n, seed=3)
    ws.metadata_dir.mkdir(parents=True)
    path = ws.metadata_dir / "00000.parquet"
    pd.DataFrame({"uid": [s.uid for s in samples], "url": [f"http://127.0.0.1:1/{s.uid}.jpg" for s in samples],
                  "text": [s.caption for s in samples]}).to_parquet(path, index=False)
    return path


def runner_output(staging: Path, meta: Path, shard_id: int, dropped: set[int], failed: set[int]) -> None:
    """What img2dataset leaves for one shard: the tar, the parquet (without the rows its writer dropped)
    and the stats (which count a dropped row as a success, as img2dataset's do)."""
    staging.mkdir(parents=True, exist_ok=True)
    name = f"{shard_id:05d}"
    rows = pq.read_table(meta).to_pandas().iloc[shard_id * PER_SHARD:(shard_id + 1) * PER_SHARD]
    kept = [(i, r) for i, r in enumerate(rows.itertuples()) if i not in dropped]
    pd.DataFrame({"key": [sample_key(shard_id, i, PER_SHARD, 5) for i, _ in kept],
                  "uid": [r.uid for _, r in kept], "url": [r.url for _, r in kept],
                  "caption": [r.text for _, r in kept],
                  "status": ["failed_to_download" if i in failed else "success" for i, _ in kept],
                  "error_message": ["HTTP Error 404: Not Found" if i in failed else None for i, _ in kept]},
                 ).to_parquet(staging / f"{name}.parquet", index=False)
    (staging / f"{name}.tar").write_bytes(b"\0" * 1024)
    successes = len(rows) - len(failed)
    (staging / f"{name}_stats.json").write_text(json.dumps({
        "count": len(rows), "successes": successes, "failed_to_download": len(failed), "failed_to_resize": 0,
        "status_dict": {"success": successes, "HTTP Error 404: Not Found": len(failed)}}))


def test_finished_shards_are_completed_promoted_and_reported(tmp_path: Path, capsys) -> None:
    ws = Workspace.create(tmp_path / "ws")
    meta = metadata(ws, 2 * PER_SHARD)
    cfg = DownloadConfig(samples_per_shard=PER_SHARD, processes=1, min_success_rate=0.5)
    job = make_job(ws, cfg, [meta], set(), 0, None, 5, "multiprocessing", None)
    assert job["staging"] == str(ws.shards_dir / STAGING_NAME) and job["img2dataset"]["number_sample_per_shard"] == 10
    staging = Path(job["staging"])
    runner_output(staging, meta, 0, dropped={2, 7}, failed={4})
    (staging / "00001_stats.json").write_text("{")  # still being written: left for the next round
    moved = promote_ready(staging, ws.shards_dir, ShardInputs.from_job(job))

    assert [shard for shard, _ in moved] == [0]
    assert sorted(p.name for p in ws.shards_dir.iterdir() if p.is_file()) == [
        "00000.parquet", "00000.tar", "00000_stats.json"]
    table = pq.read_table(ws.shards_dir / "00000.parquet").to_pandas()
    assert list(table["key"]) == [sample_key(0, i, PER_SHARD, 5) for i in range(PER_SHARD)]  # every input row
    assert list(table.loc[table["status"] == NOT_WRITTEN_STATUS, "key"]) == [sample_key(0, i, PER_SHARD, 5)
                                                                             for i in (2, 7)]
    stats = json.loads((ws.shards_dir / "00000_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["failed_to_write"]) == (10, 7, 2)

    outcome = RunOutcome([0], 10, 2.0, False, 0, "")
    report = build_report(ws, cfg, 2, "download", outcome, [0, 1], "multiprocessing")
    assert (report["shards"], report["samples"], report["successes"], report["missing_shards"]) == (1, 10, 7, ["00001"])
    assert report["failures_by_reason"] == {"not_written": 2, "http_404": 1} and report["this_run"]["samples_per_s"] == 5.0
    with pytest.raises(PoolsieveError, match=r"1 shard\(s\) did not finish \(00001\)") as missing:
        check_outcome(report, outcome, cfg, ws.shards_dir)
    assert "\n" not in str(missing.value)
    with pytest.raises(DownloadStalled, match="no shard finished within"):
        check_outcome(report, RunOutcome([], 0, 9.0, True, None, ""), cfg, ws.shards_dir)
    print_report(report)
    assert "1 whole of 2 planned" in capsys.readouterr().out

    runner_output(staging, meta, 1, dropped=set(), failed=set(range(PER_SHARD)))
    assert [shard for shard, _ in promote_ready(staging, ws.shards_dir, ShardInputs.from_job(job))] == [1]
    report = build_report(ws, cfg, 2, "download", outcome, [0, 1], "multiprocessing")
    assert report["missing_shards"] == [] and report["success_rate"] == 0.35
    with pytest.raises(PoolsieveError, match=r"only 35.00% of 20 samples were fetched, below the minimum 50.00%"):
        check_outcome(report, outcome, cfg, ws.shards_dir)
