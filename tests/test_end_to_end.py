"""End to end on a tiny built-in pool: generate -> HTTP -> img2dataset -> scorer -> score -> filter ->
reshard -> train -> evaluate, checked against the pool's defect labels."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.formats import read_subset
from poolsieve.core.uids import pairs_to_uids
from poolsieve.core.workspace import Workspace


@pytest.mark.download
@pytest.mark.train
def test_quickstart_on_a_tiny_pool(tmp_path, ray_runtime, capsys):
    from poolsieve.pipeline.demo.quickstart import run_quickstart

    ws = Workspace.create(tmp_path / "qs")
    args = argparse.Namespace(num_samples=400, seed_samples=1500, samples_seen=1024, clip_fraction=0.3,
                              eval_samples=90)
    result = run_quickstart(ws, ray_runtime, args)

    labels = pd.read_parquet(ws.root / "synthetic" / "labels.parquet").set_index("uid")
    pool = set(pairs_to_uids(read_subset(ws.subset_path("no_filter"))))
    assert len(pool) == 400  # every image came through HTTP + img2dataset
    basic = set(pairs_to_uids(read_subset(ws.subset_path("basic"))))
    defect = labels["defect"]
    # DataComp's basic filter drops every tiny image, extreme aspect ratio and short caption ...
    for bad in ("too_small", "extreme_aspect", "short_caption"):
        assert not basic & set(defect[defect == bad].index), bad
    # ... and (fastText) nearly every non-English caption, while keeping the clean pairs.
    foreign = set(defect[defect == "non_english"].index)
    assert len(basic & foreign) <= 0.1 * len(foreign)
    clean = set(defect[defect == "none"].index)
    assert len(basic & clean) >= 0.95 * len(clean)

    clip = set(pairs_to_uids(read_subset(ws.subset_path("clip30"))))
    assert abs(len(clip) - 0.3 * len(pool)) <= 3  # ties at the cut may add a few
    # The scorer learned on clean pairs: captions that name the wrong colour and shape score low.
    mismatched = set(defect[defect == "mismatched_caption"].index)
    pool_rate = len(mismatched & pool) / len(pool)
    clip_rate = len(mismatched & clip) / len(clip)
    assert clip_rate < 0.5 * pool_rate, (clip_rate, pool_rate)

    evaluations = result["evaluate"]
    assert set(evaluations) == {"no_filter", "basic", "clip30"}
    for summary in evaluations.values():
        for task in ("Synthetic shape", "Synthetic colour"):
            assert 0.0 <= summary["tasks"][task] <= 1.0
    for name in evaluations:
        run = (ws.run_dir(name) / "summary.json")
        assert run.exists()
    seen = {name: __import__("json").loads((ws.run_dir(name) / "summary.json").read_text())["samples_seen"]
            for name in evaluations}
    assert len(set(seen.values())) == 1  # the same budget for every subset
    table = result["table"]
    assert "clip30" in table and "Synthetic colour" in table and "average" in table
    assert np.isfinite(result["timings"]["total"])
