"""The failure table is kept up to date incrementally, and retried uids end up in one shard only."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
from factories import make_samples, write_img2dataset_shards

from poolsieve.pipeline.download.failures import (
    FAILURES_NAME,
    read_failures,
    reconcile_duplicates,
    update_failures,
)
from poolsieve.pipeline.download.plan import whole_shard_ids


def test_failure_table_is_incremental_and_retries_replace_failed_rows(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    samples = make_samples(30, seed=1, fail_every=4)  # 7 failures (HTTP 404)
    write_img2dataset_shards(shards, samples, per_shard=10)
    failed = [s.uid for s in samples if s.jpeg is None]

    df = update_failures(shards)
    assert list(df["uid"]) == failed and set(df["reason"]) == {"http_404"}
    assert list(df["shard"]) == [0, 0, 1, 1, 1, 2, 2]
    assert read_failures(shards)[1] == {0, 1, 2}

    # A new shard appears (a retry of shard 0's failures, now fetched): only it is read.
    jpeg = samples[0].jpeg
    retried = [replace(s, jpeg=jpeg, status="success", error_message=None) for s in samples[:10] if s.jpeg is None]
    write_img2dataset_shards(tmp_path / "tmp", retried, per_shard=10)
    for name in ("00000.tar", "00000.parquet", "00000_stats.json"):
        shutil.move(tmp_path / "tmp" / name, shards / name.replace("00000", "00003"))
    saved = (shards / "00001.parquet").read_bytes()
    (shards / "00001.parquet").write_bytes(b"corrupt: must not be read again")
    df = update_failures(shards)
    assert len(df) == 7 and read_failures(shards)[1] == {0, 1, 2, 3}
    (shards / "00001.parquet").write_bytes(saved)

    rewritten = reconcile_duplicates(shards, set(df["shard"]) | {3})
    assert rewritten == {0}
    shard0 = pd.read_parquet(shards / "00000.parquet")
    assert len(shard0) == 8 and (shard0["status"] == "success").all()
    stats = json.loads((shards / "00000_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["moved_to_later_shards"]) == (8, 8, 2)
    df = update_failures(shards, rewritten)
    assert sorted(df["uid"]) == sorted(failed[2:]) and set(df["shard"]) == {1, 2}
    everywhere = pd.concat([pd.read_parquet(p) for p in sorted(shards.glob("0*.parquet"))])
    assert everywhere["uid"].is_unique and set(everywhere["uid"]) == {s.uid for s in samples}
    assert whole_shard_ids(shards) == {0, 1, 2, 3}
    # Reconciling again changes nothing.
    assert reconcile_duplicates(shards, {0, 1, 2, 3}) == set()
    (shards / FAILURES_NAME).unlink()
    assert sorted(update_failures(shards)["uid"]) == sorted(failed[2:])
