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


def test_subsets_expand_once_per_scorer_seed() -> None:
    fq = load_benchmark()
    specs = {"no_filter": "no_filter", "clip30": {"clip_score": {"model": "${scorer}", "fraction": 0.3}},
             "basic": "basic"}
    rows, made = fq.expand_subsets(specs, ["clip30", "basic"], scorer_seeds=2)
    assert list(rows) == ["no_filter", "clip30", "basic", "clip30__raw"]  # basic names no scorer: made once
    assert rows["basic"] == fq.Row("basic", "basic", "", ("basic", "basic"))  # every run trains on it
    assert rows["clip30"].subsets == ("clip30__s0", "clip30__s1")  # run i: the subset of scorer seed i
    assert rows["clip30__raw"] == fq.Row("clip30__raw", "clip30", "raw", ("clip30__raw__s0", "clip30__raw__s1"))
    assert made == {"no_filter": "no_filter", "basic": "basic",
                    "clip30__s0": {"clip_score": {"model": "seed0", "fraction": 0.3}},
                    "clip30__s1": {"clip_score": {"model": "seed1", "fraction": 0.3}},
                    "clip30__raw__s0": {"clip_score": {"model": "raw0", "fraction": 0.3}},
                    "clip30__raw__s1": {"clip_score": {"model": "raw1", "fraction": 0.3}}}
    tasks, out = fq.quality_rows({"no_filter": [{"a": 0.2}, {"a": 0.3}, {"a": 0.25}],
                                  "clip30": [{"a": 0.5}, {"a": 0.6}, {"a": 0.55}]},
                                 {"no_filter": [10], "clip30": [3, 4, 5]}, {"clip30": "seed"})
    assert out[1]["average"] == pytest.approx(0.55) and out[1]["std"] == pytest.approx(0.05)
    assert out[1]["vs_no_filter_se"] == pytest.approx(0.3 / math.sqrt(2 * 0.05**2 / 3))
    assert (out[0]["size"], out[1]["size"], out[1]["sizes"]) == (10, 4, [3, 4, 5])
    assert (out[0]["covers"], out[1]["covers"]) == ("training seed", "scorer + training seed")
    # the removal figures of a row: its subsets' figures averaged over scorer seeds
    per_subset = [{"subset": "clip30__s0", "pool": 10, "kept": 3, "clean:count": 6, "clean:removed": 4},
                  {"subset": "clip30__s1", "pool": 10, "kept": 4, "clean:count": 6, "clean:removed": 3},
                  {"subset": "basic", "pool": 10, "kept": 9, "clean:count": 6, "clean:removed": 0}]
    merged = fq.mean_defect_rows({n: rows[n] for n in ("clip30", "basic")}, per_subset)
    assert merged == [{"subset": "clip30", "subsets": 2, "pool": 10, "kept": 3.5, "clean:count": 6,
                       "clean:removed": 3.5},
                      {"subset": "basic", "subsets": 1, "pool": 10, "kept": 9, "clean:count": 6, "clean:removed": 0}]


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
    # one scorer seed: a row's removal figures are its one subset's
    per_subset = {r["subset"]: r for r in out["defects_per_subset"]}
    assert {r["subset"]: {**r, "subset": None, "subsets": None} for r in out["defects"]} == {
        name: {**per_subset[f"{name}__s0" if f"{name}__s0" in per_subset else name], "subset": None, "subsets": None}
        for name in measured}
    meta = pd.concat([pd.read_parquet(f, columns=["uid", LABEL_COLUMN]) for f in ws.metadata_files()])
    members = set(pairs_to_uids(read_subset(ws.subset_path("no_filter"))))
    labels = meta[meta["uid"].isin(members)].set_index("uid")[LABEL_COLUMN]
    assert set(out["labels"]) == set(labels) and set(out["labels"]) <= {CLEAN, *DEFECTS}
    for row in out["defects_per_subset"]:
        kept = set(pairs_to_uids(read_subset(ws.subset_path(row["subset"]))))
        assert row["pool"] == len(labels) and row["kept"] == len(kept & members)
        for kind in out["labels"]:
            of_kind = set(labels[labels == kind].index)
            assert row[f"{kind}:count"] == len(of_kind)
            assert row[f"{kind}:removed"] == len(of_kind - kept)
    by_name = {r["subset"]: r for r in out["defects"]}  # one scorer seed: each row as its one subset
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


FIGURES = ("samples_seen", "tasks", "spread", "quality", "labels", "defects", "defects_per_subset", "seeds", "pool")


@pytest.mark.download
@pytest.mark.train
@pytest.mark.timeout(1800)  # training slows tenfold when the machine is shared
def test_two_toy_runs_in_two_workspaces_give_the_same_figures(tmp_path, capsys) -> None:
    """The benchmark repeats exactly: scorers (the raw one too), subsets, reshards, training, evaluation.
    A smaller experiment (four subsets, two trained plus the raw scorer's clip30) keeps the pair short."""
    import yaml

    fq = load_benchmark()
    config = yaml.safe_load(fq.DEFAULT_CONFIG.read_text())
    config["filter"]["subsets"] = {k: config["filter"]["subsets"][k]
                                   for k in ("no_filter", "clip30", "image_clip45", "dedup")}
    config["train"]["subsets"] = ["no_filter", "clip30"]
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    figures = []
    for i in range(2):
        root = tmp_path / f"run{i}"
        assert fq.main(["--workspace", str(root), "--toy", "--config", str(tmp_path / "small.yaml"),
                        "--raw-subsets", "clip30", "--samples-seen", "256", "--scorer-samples-seen", "512"]) == 0
        out = json.loads((root / "filter_quality.json").read_text())
        assert [r["subset"] for r in out["quality"]] == ["no_filter", "clip30", "clip30__raw"]
        figures.append(json.dumps({k: out[k] for k in FIGURES}, sort_keys=True))  # NaN compares as text
    capsys.readouterr()
    assert figures[0] == figures[1]
