"""The quickstart's own steps, in this process: the pool generated once (its server's port remembered),
the seed set written once, and the experiment it runs. The whole quickstart is tests/test_end_to_end.py."""

from __future__ import annotations

from pathlib import Path

from poolsieve.core.formats import model_key, score_column
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.commands import RUN_STAGES
from poolsieve.pipeline.demo.quickstart import ensure_pool, ensure_seed_set, experiment_config
from poolsieve.pipeline.experiment import check_experiment
from poolsieve.train.shards import count_samples, list_shards


def test_pool_and_seed_set_are_made_once(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    info = ensure_pool(ws, 40)
    assert info["samples"] == 40 and sum(info["defects"].values()) == 40 and ws.labels_path.is_file()
    stamp = [p.stat().st_mtime_ns for p in ws.metadata_files()]
    assert ensure_pool(ws, 40) == info and [p.stat().st_mtime_ns for p in ws.metadata_files()] == stamp
    assert ensure_pool(ws, 50)["samples"] == 50  # another size: made again

    seed = ensure_seed_set(ws, 30, image_size=16)
    assert seed == ws.quickstart_seed_dir and count_samples(list_shards(seed)) == 30
    before = [p.stat().st_mtime_ns for p in list_shards(seed)]
    assert ensure_seed_set(ws, 30, image_size=16) == seed and [p.stat().st_mtime_ns for p in list_shards(seed)] == before


def test_the_experiment_scores_with_the_scorer_and_filters_by_its_column() -> None:
    config = experiment_config("/ws/runs/scorer/checkpoints/epoch_latest.pt", 0.25, 1024, 60)
    check_experiment(config)
    assert list(config) == [s for s in RUN_STAGES if s in config] == ["score", "filter", "reshard", "train", "evaluate"]
    column = score_column(model_key("poolsieve-tiny", "/ws/runs/scorer/checkpoints/epoch_latest.pt"))
    assert config["filter"]["subsets"]["clip25"] == {"clip_score": {"column": column, "fraction": 0.25}}
    assert config["train"] == {"scale": "tiny", "samples_seen": 1024} and config["evaluate"]["synthetic_samples"] == 60
    assert "samples_seen" not in experiment_config("x.pt", 0.3, None, 60)["train"]
