"""A subset or filter step that keeps under 10% of the pool is refused unless confirmed (``--allow-small``,
``allow_small=true`` in the call, ``filter: {allow_small: true}`` in a run config); ``--dry-run`` prints
what every spec keeps and what each step drops, writing nothing (issue 26)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from poolsieve.core.errors import ConfigError, PoolsieveWarning
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.cli import main
from poolsieve.pipeline.experiment import run_experiment
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter

ROWS = 400  # two tables of 200; score i / ROWS for row i, so a threshold keeps an exact count


def make_pool(root: Path) -> Workspace:
    ws = Workspace.create(root)
    ws.scores_dir.mkdir()
    for shard in range(2):
        rows = np.arange(shard * 200, (shard + 1) * 200)
        pd.DataFrame({"uid": [f"{i:032x}" for i in rows], "text": ["a photo of a dog"] * len(rows),
                      "status": "success", "clip_b32_similarity_score": rows / ROWS,
                      "clip_l14_similarity_score": (ROWS - 1 - rows) / ROWS},
                     ).to_parquet(ws.score_table_path(f"{shard:05d}"), index=False)
    return ws


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (hidden lock files and empty folders too) with its size and mtime."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            st = os.lstat(Path(folder) / name)
            out[str((Path(folder) / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def pool(tmp_path) -> Workspace:
    return make_pool(tmp_path / "pool")


LOCAL = Runtime(executor="local")
FEW = "clip_score(threshold=0.95)"  # 20 of 400 rows: 5%


def test_a_small_filter_step_is_refused_with_counts_parameters_and_the_flag(pool: Workspace) -> None:
    with pytest.raises(ConfigError) as caught:
        run_filter(pool, FilterConfig(spec=[f"top = {FEW}"]), LOCAL)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("subset 'top': filter 'clip_score' would keep 20 of 400 rows (5.0%, under 10%)")
    assert "check its parameters (column, model, threshold, fraction)" in message
    assert "--allow-small" in message and "allow_small=true" in message
    assert not pool.subset_path("top").exists() and not pool.subset_info_path("top").exists()


def test_confirmed_by_flag_by_call_or_by_run_config(pool: Workspace) -> None:
    with pytest.warns(PoolsieveWarning, match="kept 20 of 400 rows"):
        out = run_filter(pool, FilterConfig(spec=[f"top = {FEW}"], allow_small=True), LOCAL)
    assert out["top"]["count"] == 20 and pool.subset_path("top").exists()
    with pytest.warns(PoolsieveWarning):
        out = run_filter(pool, FilterConfig(spec=["top2 = clip_score(threshold=0.95, allow_small=true)"]), LOCAL)
    assert out["top2"]["count"] == 20
    record = json.loads(pool.subset_info_path("top2").read_text())
    assert record["steps"][-1]["details"]["allow_small"] is True
    with pytest.warns(PoolsieveWarning):
        run_experiment(pool, {"filter": {"allow_small": True, "subsets": {"top3": FEW}}}, LOCAL, report_skipped=False)
    assert pool.subset_path("top3").exists()
    with pytest.raises(ConfigError, match="allow_small takes true or false"):
        run_filter(pool, FilterConfig(spec=["x = clip_score(threshold=0.95, allow_small=maybe)"]), LOCAL)


def test_a_small_subset_of_large_steps_is_refused_and_names_them(pool: Workspace) -> None:
    # b32 >= 0.7 keeps the top 30% of rows, l14 >= 0.7 the bottom 30%: 0 together
    spec = "both = clip_score(threshold=0.7) & clip_score(column=clip_l14_similarity_score, threshold=0.75)"
    with pytest.raises(ConfigError) as caught:
        run_filter(pool, FilterConfig(spec=[spec]), LOCAL)
    message = str(caught.value)
    assert message.startswith("subset 'both': it would keep 0 of 400 rows (0.0%, under 10%); its steps keep "
                              "clip_score(threshold=0.7) 30.0%, clip_score(column=clip_l14_similarity_score, "
                              "threshold=0.75) 25.0%; nothing written")
    assert "--allow-small" in message and not pool.subset_path("both").exists()
    # a complement is a subset too; a call saying allow_small confirms the subset it is in
    with pytest.raises(ConfigError, match="subset 'rest': it would keep 20 of 400"):
        run_filter(pool, FilterConfig(spec=["rest = ~clip_score(threshold=0.05)"]), LOCAL)
    out = run_filter(pool, FilterConfig(spec=[spec.replace("0.75)", "0.75, allow_small=true)")]), LOCAL)
    assert out["both"]["count"] == 0
    # a call that asks for its size confirms it, and the subset it is in
    out = run_filter(pool, FilterConfig(spec=["top5 = clip_score(fraction=0.05) & clip_score(threshold=0.5)"]), LOCAL)
    assert out["top5"]["count"] == 21  # DataComp's cut: int(400 * 0.05) + 1 rows
    # ten percent is not small
    assert run_filter(pool, FilterConfig(spec=["tenth = clip_score(threshold=0.9)"]), LOCAL)["tenth"]["count"] == 40


def test_cli_refusal_is_one_line_exit_2_and_earlier_subsets_stay(pool: Workspace, capsys) -> None:
    argv = ["filter", "-w", str(pool.root), "--executor", "local", "--spec", "big = clip_score(threshold=0.5)",
            "--spec", f"top = {FEW}"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "units" not in line]  # progress lines aside
    assert len(err) == 1 and err[0].startswith("poolsieve filter: error: subset 'top': filter 'clip_score' would keep")
    assert pool.subset_path("big").exists() and not pool.subset_path("top").exists()
    assert main([*argv, "--allow-small"]) == 0
    assert pool.subset_path("top").exists()


def test_dry_run_prints_every_step_and_writes_nothing(pool: Workspace, capsys) -> None:
    before = files_of(pool.root)
    argv = ["filter", "-w", str(pool.root), "--executor", "local", "--dry-run",
            "--spec", "half = clip_score(threshold=0.5)",
            "--spec", "mix = half & ~clip_score(threshold=0.9) | clip_score(column=clip_l14_similarity_score, "
                      "threshold=0.95)",
            "--spec", f"top = {FEW}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert files_of(pool.root) == before  # no .npy/.json, no lock file, no subsets/ folder, no log
    assert not pool.subsets_dir.exists()
    lines = [line.strip() for line in out.splitlines()]
    assert any(line.split()[:5] == ["half", "200", "50.00%", "written", line.split()[-1]] for line in lines)
    assert any(line.split()[:4] == ["top", "20", "5.00%", "refused"] for line in lines)
    assert "clip_score(threshold=0.5): keeps 200 (50.0%), drops 200" in lines
    assert "~clip_score(threshold=0.9): keeps 360 (90.0%): the pool's 400 minus 40" in lines
    # the and: 200 (half) -> 160 (without the top 10%); the or adds the l14 top 5% (rows 0..19, outside half)
    assert "half & ~clip_score(threshold=0.9): keeps 160 (40.0%); after each part: 200 -> 160" in lines
    assert any(line.startswith("half & ~clip_score(threshold=0.9) | clip_score(column=clip_l14_similarity_score, "
                               "threshold=0.95): keeps 180 (45.0%); after each part: 160 -> 180") for line in lines)
    refused = [line for line in lines if line.startswith("refused: subset 'top'")]
    assert len(refused) == 1 and "--allow-small" in refused[0]
    assert "clip_score(threshold=0.95): keeps 20 (5.0%), drops 380 [under 10% of the pool]" in lines
    assert main([*argv, "--allow-small"]) == 0
    assert "refused" not in capsys.readouterr().out
    assert files_of(pool.root) == before


def test_run_dry_run_evaluates_the_filter_section_alone(pool: Workspace, tmp_path, capsys) -> None:
    config = {"workspace": str(pool.root), "filter": {"subsets": {"half": "clip_score(threshold=0.5)", "top": FEW}},
              "reshard": {"shard_size": 100}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    before = files_of(pool.root)
    assert main(["run", "--config", str(path), "--executor", "local", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "half = clip_score(threshold=0.5): keeps 200 of 400" in out and "refused: subset 'top'" in out
    assert "== reshard" not in out  # no later stage ran
    assert files_of(pool.root) == before
    # the YAML key alone: the filter stage is a dry run and no later stage runs
    summary = run_experiment(pool, {**config, "filter": {**config["filter"], "dry_run": True}}, LOCAL)
    assert set(summary) == {"filter"} and summary["filter"]["top"]["refused"]
    assert "reshard: skipped (the filter stage was a dry run)" in capsys.readouterr().out
    assert files_of(pool.root) == before
    assert main(["run", "--config", str(path), "--executor", "local", "--dry-run", "--only", "reshard"]) == 2


def test_a_seed_filter_may_keep_little(pool: Workspace) -> None:
    """train-scorer's --seed-filter makes a seed, a small clean sample by design: not refused."""
    from poolsieve.pipeline.train_scorer import ScorerConfig, _filter

    with pytest.warns(PoolsieveWarning, match="kept 20 of 400 rows"):
        assert _filter(pool, ScorerConfig(seed_filter=FEW, name="s"), LOCAL, False) == "s_seed"
    assert len(np.load(pool.subset_path("s_seed"))) == 20
