"""``poolsieve train-scorer``: seed data (image/caption pairs, a uid subset, a filter spec, shards) -> a CLIP
scorer checkpoint that ``poolsieve score`` takes, with no pretrained weights anywhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import read_score_table, score_column, write_subset
from poolsieve.core.uids import UidSet
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.cli import main
from poolsieve.pipeline.score.stage import ScoreConfig, score_pool
from poolsieve.pipeline.train_scorer import ScorerConfig, seed_shards
from poolsieve.train.shards import count_samples, list_shards

# The smallest budget the tiny scale trains: 4 epochs of one batch of 16.
TINY = ["--samples-seen", "64", "--batch-size", "16", "--workers", "1", "--threads", "1"]


def write_pairs(folder: Path, n: int) -> Path:
    """``n`` image/caption pairs (half in a subfolder), plus a fake image and an image without caption."""
    (folder / "more").mkdir(parents=True)
    for i, s in enumerate(make_samples(n, seed=11, image_size=32)):
        where = folder / ("more" if i % 2 else "")
        (where / f"pair{i}.jpg").write_bytes(s.jpeg)
        (where / f"pair{i}.txt").write_text(s.caption)
    (folder / "fake.jpg").write_bytes(b"<html>not an image</html>")
    (folder / "fake.txt").write_text("a caption")
    (folder / "alone.png").write_bytes((folder / "pair0.jpg").read_bytes())
    return folder


def make_pool(root: Path) -> Workspace:
    ws = Workspace.create(root)
    write_img2dataset_shards(ws.shards_dir, make_samples(16, seed=4, image_size=40), per_shard=8)
    return ws


@pytest.mark.train
def test_pairs_folder_to_a_scorer_that_score_takes(tmp_path, capsys):
    ws = make_pool(tmp_path / "pool")
    pairs = write_pairs(tmp_path / "pairs", 24)
    out = tmp_path / "export" / "scorer.pt"
    argv = ["train-scorer", "-w", str(ws.root), "--executor", "local", "--seed", str(pairs), "--out", str(out), *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "24 image/caption pairs" in printed and "1 no caption" in printed and "1 not an image" in printed
    assert "64 samples seen" in printed
    command = next(line for line in printed.splitlines() if "score with" in line).split("score with", 1)[1].split()
    assert command[:3] == ["poolsieve", "score", "--model"] and command[3] == f"scorer=poolsieve-tiny:{out}"
    assert count_samples(list_shards(ws.root / "seeds" / "scorer")) == 24
    assert (ws.run_dir("scorer") / "checkpoints" / "epoch_latest.pt").is_file()

    assert main(["score", "-w", str(ws.root), "--executor", "local", "--model", command[3], "--threads", "1"]) == 0
    capsys.readouterr()
    for tar in ws.shard_tars():
        df = read_score_table(ws.score_table_path(tar.stem))
        scores = df[score_column("scorer")].to_numpy()
        assert len(df) == 8 and np.isfinite(scores).all() and (np.abs(scores) <= 1.001).all()

    assert main(argv) == 0  # finished: skipped, the same weights
    assert "skipped (finished before)" in capsys.readouterr().out


def test_subset_filter_and_shard_seeds_become_training_shards(tmp_path, local_runtime):
    ws = make_pool(tmp_path / "pool")
    from poolsieve.core.models import register_model_configs

    register_model_configs()
    score_pool(ws, ScoreConfig(models=["poolsieve-tiny"], threads=1), local_runtime, quiet=True)  # tables to filter
    uids = read_score_table(ws.score_table_path("00000"), ["uid"])["uid"].tolist()[:5]
    write_subset(ws.subset_path("clean"), UidSet.from_hex(uids))

    folder, what = seed_shards(ws, ScorerConfig(seed="clean"), local_runtime)
    assert Path(folder) == ws.filtered_dir("scorer_seed") and count_samples(list_shards(folder)) == 5
    assert "subsets/clean.npy" in what and "5 samples" in what
    copied = tmp_path / "elsewhere.npy"
    shutil.copy(ws.subset_path("clean"), copied)
    folder, _ = seed_shards(ws, ScorerConfig(seed=str(copied), name="other"), local_runtime)
    assert count_samples(list_shards(folder)) == 5

    folder, _ = seed_shards(ws, ScorerConfig(seed_filter="no_filter", name="all"), local_runtime)
    assert ws.subset_path("all_seed").exists() and count_samples(list_shards(folder)) == 16

    folder, what = seed_shards(ws, ScorerConfig(seed=str(ws.filtered_dir("scorer_seed"))), local_runtime)
    assert folder == str(ws.filtered_dir("scorer_seed")) and what.startswith("webdataset shards")


def test_bad_seeds_are_one_line_errors(tmp_path, capsys):
    ws = make_pool(tmp_path / "pool")
    with pytest.raises(ConfigError, match="needs seed data"):
        seed_shards(ws, ScorerConfig(), None)
    with pytest.raises(ConfigError, match="not both"):
        seed_shards(ws, ScorerConfig(seed="x", seed_filter="no_filter"), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image/caption pairs"):
        seed_shards(ws, ScorerConfig(seed=str(tmp_path / "empty")), None)
    with pytest.raises(InputError, match="seed data not found"):
        seed_shards(ws, ScorerConfig(seed=str(tmp_path / "missing" / "folder")), None)
    assert main(["train-scorer", "-w", str(ws.root), "--executor", "local", "--seed", "no_such_subset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_subset" in err[0]
    assert main(["train-scorer", "-w", str(ws.root), "--executor", "local", "--seed", "x", "--name", "../up"]) == 2
    assert "scorer name '../up' is not allowed" in capsys.readouterr().err


def test_score_help_points_to_train_scorer(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "train-scorer" in capsys.readouterr().out

