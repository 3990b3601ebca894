"""`poolsieve run`: every stage that runs prints its summary; every stage that does not says why, in one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import cli
from poolsieve.pipeline.experiment import STAGES


@pytest.fixture
def pool(tmp_path):
    """60 downloaded samples in 3 shards (every 10th failed) with their score tables."""
    ws = Workspace.create(tmp_path / "pool")
    samples = make_samples(60, seed=5, fail_every=10)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=20)
    ws.scores_dir.mkdir()
    for shard, lo in enumerate(range(0, 60, 20)):
        chunk = samples[lo:lo + 20]
        pd.DataFrame({
            "uid": [s.uid for s in chunk], "text": [s.caption for s in chunk],
            "original_width": [s.original_width for s in chunk], "original_height": [s.original_height for s in chunk],
            "clip_b32_similarity_score": [i / 20 for i in range(len(chunk))],
            "status": [s.status for s in chunk],
        }).to_parquet(ws.score_table_path(f"{shard:05d}"))
    config = tmp_path / "experiment.yaml"
    config.write_text(json.dumps({"workspace": str(ws.root), "executor": "local",
                                  "filter": {"subsets": {"all": "no_filter", "top": {"clip_score": {"fraction": 0.5}}}},
                                  "reshard": {"shard_size": 16}}))
    return ws, config


def lines_of(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def skipped(lines: list[str]) -> dict[str, str]:
    return {ln.split(":", 1)[0]: ln for ln in lines if ln.split(":", 1)[0] in STAGES and ": skipped (" in ln}


def test_run_reports_every_stage_ran_or_skipped(pool, capsys):
    ws, config = pool
    assert cli.main(["run", "-c", str(config)]) == 0
    lines = lines_of(capsys)
    # The stages without a section say so, one line each, naming the missing section.
    assert skipped(lines) == {name: f"{name}: skipped (the config has no '{name}:' section)"
                              for name in ("download", "score", "train", "evaluate")}
    # The stages that ran print their one-screen summaries: filter once, reshard once per subset.
    assert sum(ln.startswith("== filter") for ln in lines) == 1
    assert sum(ln.startswith("== reshard") for ln in lines) == 2
    assert (ws.filtered_dir("all") / "meta.json").exists() and (ws.filtered_dir("top") / "meta.json").exists()
    assert lines[-3:] == ["== run", f"  workspace  {ws.root}", "  stages     filter, reshard"]

    # --only: the others say they were left out by --only; reshard finds both outputs whole.
    assert cli.main(["run", "-c", str(config), "--only", "reshard"]) == 0
    lines = lines_of(capsys)
    assert skipped(lines) == {name: f"{name}: skipped (not in --only reshard)"
                              for name in STAGES if name != "reshard"}
    assert sum(ln.startswith("== reshard") for ln in lines) == 2
    assert sum("already whole" in ln for ln in lines) == 2


def test_per_subset_stage_without_subsets_says_so(tmp_path, capsys):
    ws = Workspace.create(tmp_path / "empty")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"workspace": str(ws.root), "executor": "local", "reshard": {}}))
    assert cli.main(["run", "-c", str(config)]) == 0
    lines = lines_of(capsys)
    assert "reshard: skipped (no subsets: none in subsets/ and none listed in the config)" in lines
    assert len(skipped(lines)) == len(STAGES)
