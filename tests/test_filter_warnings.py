"""A filter that keeps a small share of the pool warns with the numbers and the parameter to change
(issue 15: semdedup with default settings kept 2.4% of a real pool without a word)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import PoolsieveWarning
from poolsieve.core.formats import write_embeddings
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.filters.registry import FEW_KEPT, few_kept_warning
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter

ROWS = 400


@pytest.fixture(scope="module")
def tight(tmp_path_factory) -> Workspace:
    """A pool whose image embeddings sit in 4 tight clumps (cosine > 0.99 within a clump): near-duplicates."""
    rng = np.random.default_rng(3)
    ws = Workspace.create(tmp_path_factory.mktemp("tight"))
    ws.scores_dir.mkdir()
    centres = rng.standard_normal((4, 32))
    for shard, rows in enumerate(np.array_split(np.arange(ROWS), 2)):
        img = centres[rng.integers(0, 4, len(rows))] + 0.01 * rng.standard_normal((len(rows), 32))
        pd.DataFrame({"uid": [f"{i:032x}" for i in rows], "text": ["a photo of a dog"] * len(rows),
                      "status": "success", "clip_b32_similarity_score": rng.normal(0.3, 0.05, len(rows))},
                     ).to_parquet(ws.score_table_path(f"{shard:05d}"), index=False)
        write_embeddings(ws.embeddings_path(f"{shard:05d}"), {"b32_img": img, "b32_txt": img})
    return ws


def test_semdedup_on_tight_clusters_warns_with_numbers_and_eps(tight: Workspace) -> None:
    cfg = FilterConfig(subsets={"dd": "semdedup(clusters=2, eps=0.05)"}, allow_small=True)  # written: confirmed
    with pytest.warns(PoolsieveWarning) as caught:
        out = run_filter(tight, cfg, Runtime(executor="local"))
    kept = out["dd"]["count"]
    assert kept < FEW_KEPT * ROWS  # the clumps collapse to a handful of rows
    # only ours: a library's thread (wilds' version check) may warn while the block runs
    message = str(next(w.message for w in caught if issubclass(w.category, PoolsieveWarning)))
    assert f"filter 'semdedup' kept {kept:,} of {ROWS:,} rows ({100 * kept / ROWS:.1f}%" in message
    assert "eps: a smaller eps drops fewer near-duplicates (now 0.05)" in message
    record = json.loads(tight.subset_info_path("dd").read_text())
    assert record["steps"][-1]["details"]["warning"] == message  # the record keeps it too


def test_given_parameter_is_quoted_and_enough_kept_is_silent(tight: Workspace, recwarn) -> None:
    run_filter(tight, FilterConfig(subsets={"ok": "semdedup(clusters=2, eps=0.0)"}), Runtime(executor="local"))
    assert not [w for w in recwarn if issubclass(w.category, PoolsieveWarning)]  # eps 0: nothing is a duplicate
    message = few_kept_warning("semdedup", {"eps": 0.3}, 3, 400)
    assert message is not None and "(now 0.3)" in message and "3 of 400 rows (0.8%" in message
    assert few_kept_warning("semdedup", {}, 40, 400) is None  # 10% is not "few"
    # a filter that declares no parameter names its parameters
    assert "check its parameters (column, model, threshold, fraction)" in few_kept_warning("clip_score", {}, 1, 400)


@pytest.mark.subprocess
def test_cli_prints_the_warning_on_one_line(tight: Workspace) -> None:
    proc = subprocess.run([sys.executable, "-m", "poolsieve.pipeline.cli", "filter", "-w", str(tight.root),
                           "--spec", "top = clip_score(threshold=0.5)", "--allow-small"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "filter 'clip_score' kept" in line]
    assert len(lines) == 1 and lines[0].startswith("poolsieve: warning: filter 'clip_score' kept 0 of 400 rows")
    assert "check its parameters" in lines[0]


def test_warning_threshold_is_ten_percent() -> None:
    assert FEW_KEPT == 0.10
    assert few_kept_warning("no_filter", {}, 0, 0) is None  # an empty pool has nothing to warn about
