"""``download --retry-failed`` makes its shards as the pool's were made, without the flags being repeated."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_download_support import assert_shards_whole, make_served_pool, parquet_rows, tar_uids

from poolsieve.core.errors import InputError
from poolsieve.pipeline.cli import main
from poolsieve.pipeline.download.failures import FAILURES_NAME
from poolsieve.pipeline.download.report import REPORT_NAME
from poolsieve.pipeline.download.stage import STATE_NAME, recorded_settings

# What the user gives on every run (the speed and the network guard), not how shards are made.
RUN_FLAGS = ["--executor", "local", "--processes", "1", "--threads", "4", "--timeout", "2", "--retries", "0",
             "--fetch-deadline", "5", "--allow-network", "127.0.0.1/32"]


def _image_sides(shards: Path, shard: str) -> list[int]:
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(shards / f"{shard}.tar") as tar:
        return [max(Image.open(io.BytesIO(tar.extractfile(m).read())).size) for m in tar if m.name.endswith(".jpg")]


@pytest.mark.download
def test_retry_failed_reuses_the_shards_settings(tmp_path: Path, capsys) -> None:
    pool = make_served_pool(tmp_path / "ws", n=30, per_file=30)
    ws, shards = pool.ws.root, pool.ws.shards_dir
    failing = list(pool.metadata["uid"])[2::6]  # 5 urls answer 500 at first
    pool.server.set_faults({pool.path_of(u): "http_500" for u in failing})
    try:
        assert main(["download", "-w", str(ws), "--samples-per-shard", "8", "--image-size", "40", *RUN_FLAGS]) == 0
        report = json.loads((shards / REPORT_NAME).read_text())
        assert report["planned_shards"] == 4 and report["failures_by_reason"] == {"http_500": len(failing)}
        capsys.readouterr()

        pool.server.clear_faults()  # the server recovers; the retry repeats neither --samples-per-shard
        before = pool.server.requests()  # nor --image-size
        assert main(["download", "-w", str(ws), "--retry-failed", *RUN_FLAGS]) == 0
        err = capsys.readouterr().err
    finally:
        pool.server.stop()
    assert "samples_per_shard=8 (not 10000)" in err and "image_size=40 (not 512)" in err
    assert pool.server.requests() - before == len(failing)  # only the failures were fetched again
    report = json.loads((shards / REPORT_NAME).read_text())
    assert report["this_run"]["mode"] == "retry_failed" and report["failures"] == 0 and report["successes"] == 30
    assert report["shards"] == 5 and report["missing_shards"] == []  # 4 planned + 1 retry shard
    rows = parquet_rows(shards)
    assert rows["uid"].is_unique and set(rows["uid"]) == set(pool.metadata["uid"])
    assert set(rows.loc[rows["uid"].isin(failing), "shard"]) == {"00004"}
    counts = rows.groupby("shard").size().to_dict()
    assert all(n <= 8 for n in counts.values()), counts  # the 8-sample layout is kept
    assert set(tar_uids(shards)) == set(pool.metadata["uid"])
    assert max(_image_sides(shards, "00004")) == 40 == max(_image_sides(shards, "00000"))
    assert pd.read_parquet(shards / FAILURES_NAME).empty
    assert_shards_whole(shards)
    state = json.loads((shards / STATE_NAME).read_text())
    assert state["samples_per_shard"] == 8 and state["shard_settings"]["image_size"] == 40

    # A pool whose download recorded nothing (older or copied without its records): the size is read
    # off the shards' stats.
    (shards / STATE_NAME).unlink()
    (shards / REPORT_NAME).unlink()
    assert recorded_settings(shards) == {"samples_per_shard": 8}


def test_a_record_that_is_not_a_setting_is_refused_in_one_line(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / STATE_NAME).write_text(json.dumps({"samples_per_shard": 8, "planned_shards": 1,
                                                 "shard_settings": {"image_size": "huge"}}))
    with pytest.raises(InputError, match=r"download_state.json: records image_size='huge', not a int"):
        recorded_settings(shards)
