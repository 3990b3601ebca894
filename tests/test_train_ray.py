"""Training on Ray Train: two CPU workers (gloo) in one torch process group, each reading its own shards."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import write_wds

from poolsieve.train.config import TrainConfig
from poolsieve.train.trainer import train_clip


@pytest.mark.train
def test_two_ray_train_workers_read_disjoint_shards(tmp_path, ray_runtime, monkeypatch):
    data = write_wds(tmp_path / "d", 200, seed=8, per_shard=10)[0].parent  # 20 shards
    shard_log = tmp_path / "shards_read"
    shard_log.mkdir()
    monkeypatch.setenv("POOLSIEVE_SHARD_LOG", str(shard_log))
    cfg = TrainConfig(samples_seen=128, batch_size=32, num_checkpoints=1, ray_workers=2, threads=1, workers=1)
    s = train_clip(data, tmp_path / "run", cfg, runtime=ray_runtime)
    assert s["world_size"] == 2 and s["samples_seen"] == 128 == s["budget"]
    assert Path(s["checkpoint"]).exists() and (tmp_path / "run" / "info.pkl").exists()
    read = {rank: {line for f in shard_log.glob(f"rank{rank}-*.txt") for line in f.read_text().split()}
            for rank in (0, 1)}
    assert read[0] and read[1] and not read[0] & read[1]
    assert read[0] | read[1] <= {str(p) for p in data.glob("*.tar")}
