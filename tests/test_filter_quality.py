"""benchmarks/filter_quality.py at toy size: the table's shape, and defect counts equal to the pool's labels."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from poolsieve.core.formats import read_subset
from poolsieve.core.uids import pairs_to_uids
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.demo.synthetic_pool import CLEAN, DEFECTS, LABEL_COLUMN

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "filter_quality.py"
TRAINED = ["no_filter", "clip30", "basic"]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("filter_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["filter_quality"] = module
    spec.loader.exec_module(module)
    return module


def test_subsets_expand_once_per_scorer() -> None:
    fq = load_benchmark()
    specs = {"no_filter": "no_filter", "clip30": {"clip_score": {"model": "${scorer}", "fraction": 0.3}},
             "basic": "basic"}
    out = fq.expand_subsets(specs, ["clip30", "basic"])
    assert list(out) == ["no_filter", "clip30", "basic", "clip30__raw"]  # basic names no scorer: made once
    assert out["clip30__raw"] == ("clip30", "raw", {"clip_score": {"model": "raw", "fraction": 0.3}})
    assert out["clip30"][2] == {"clip_score": {"model": "seed", "fraction": 0.3}}
    rows = fq.quality_rows({"no_filter": [{"a": 0.2}, {"a": 0.3}, {"a": 0.25}],
                            "clip30": [{"a": 0.5}, {"a": 0.6}, {"a": 0.55}]}, {}, {})[1]
    assert rows[1]["average"] == pytest.approx(0.55) and rows[1]["std"] == pytest.approx(0.05)
    assert rows[1]["vs_no_filter_se"] == pytest.approx(0.3 / math.sqrt(2 * 0.05**2 / 3))


@pytest.mark.download
@pytest.mark.train
@pytest.mark.timeout(1800)  # training slows tenfold when the machine is shared
def test_toy_benchmark_shape_and_defect_counts(tmp_path, capsys) -> None:
    fq = load_benchmark()
    root = tmp_path / "fq"
    assert fq.main(["--workspace", str(root), "--toy", "--subsets", ",".join(TRAINED),
                    "--raw-subsets", "clip30"]) == 0
    printed = capsys.readouterr().out
    out = json.loads((root / "filter_quality.json").read_text())
    assert "vs no_filter (SE)" in printed and "removal precision" in printed

    # one row per trained subset (seed scorer) plus the raw scorer's clip30, one seed each
    trained = [r["subset"] for r in out["quality"]]
    assert trained == [*TRAINED, "clip30__raw"]
    assert out["tasks"] == ["Synthetic shape", "Synthetic colour", "synthetic_retrieval"]
    for row in out["quality"]:
        assert row["seeds"] == 1 and 0 <= row["average"] <= 1 and row["size"] > 0
        assert math.isnan(row["std"])  # one seed: no spread to report
        assert 0 <= row["classification"] <= 1

    # every subset of the experiment file is measured on what it removes, decontaminate included
    ws = Workspace.open(root)
    measured = {r["subset"] for r in out["defects"]}
    assert {"decontaminate", "dedup", "semdedup", "d2_pruning", "image_clip45", "clip30__raw"} <= measured
    meta = pd.concat([pd.read_parquet(f, columns=["uid", LABEL_COLUMN]) for f in ws.metadata_files()])
    members = set(pairs_to_uids(read_subset(ws.subset_path("no_filter"))))
    labels = meta[meta["uid"].isin(members)].set_index("uid")[LABEL_COLUMN]
    assert set(out["labels"]) == set(labels) and set(out["labels"]) <= {CLEAN, *DEFECTS}
    for row in out["defects"]:
        kept = set(pairs_to_uids(read_subset(ws.subset_path(row["subset"]))))
        assert row["pool"] == len(labels) and row["kept"] == len(kept & members)
        for kind in out["labels"]:
            of_kind = set(labels[labels == kind].index)
            assert row[f"{kind}:count"] == len(of_kind)
            assert row[f"{kind}:removed"] == len(of_kind - kept)
    by_name = {r["subset"]: r for r in out["defects"]}
    assert by_name["no_filter"]["removed"] == 0
    # the filters catch what they are meant to catch: dedup keeps one row per image bytes ...
    digests = pd.concat([pd.read_parquet(f, columns=["uid", "sha256"]) for f in ws.metadata_files()])
    digests = digests[digests["uid"].isin(members)]["sha256"]
    assert by_name["dedup"]["removed"] == len(digests) - digests.nunique() >= by_name["dedup"]["duplicate_image:count"]
    # (which copy stays is the first in the pool's row order, a hash of the uid: the planted copy or its
    # original alike, so only one per group is certain)
    shas = pd.concat([pd.read_parquet(f, columns=["uid", "sha256"]) for f in ws.metadata_files()]).set_index("uid")
    kept_shas = shas.loc[sorted(set(pairs_to_uids(read_subset(ws.subset_path("dedup")))) & members), "sha256"]
    assert kept_shas.is_unique and set(kept_shas) == set(digests)
    # ... basic drops every tiny image, decontaminate every byte copy of an evaluation image
    assert by_name["basic"]["too_small:removed"] == by_name["basic"]["too_small:count"]
    assert by_name["decontaminate"]["eval_copy:removed"] == by_name["decontaminate"]["eval_copy:count"]
