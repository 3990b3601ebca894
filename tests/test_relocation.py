"""A finished workspace copied (or mounted) elsewhere works unchanged: nothing redone, nothing refused,
also when the copy did not keep file times.

Every path a stage stores in the workspace (summaries, records, fingerprints) is relative to it
(``Workspace.rel``), so the copy's records describe the copy. The original is moved away after the
copy, so a record that still pointed at it would fail here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import cli
from poolsieve.pipeline.experiment import STAGES

EXPERIMENT = {
    "workspace": ".",
    "executor": "local",
    "download": {"image_size": 32, "samples_per_shard": 50, "processes": 1, "threads": 8, "timeout": 5.0,
                 "allow_networks": ["127.0.0.1/32"]},
    "score": {"models": ["poolsieve-tiny"], "batch_size": 50},
    "filter": {"subsets": {"all": "no_filter", "top": {"clip_score": {"column": "clip_poolsieve_tiny_similarity_score", "fraction": 0.5}}}},
    "reshard": {"shard_size": 40},
    "train": {"samples_seen": 64, "batch_size": 32, "threads": 1, "num_checkpoints": 1, "workers": 0},
    "evaluate": {"tasks": "synthetic", "synthetic_samples": 24, "batch_size": 24},
}


def digests(root: Path) -> dict[str, str]:
    """Every file of the workspace (locks and temporary names aside) and its sha256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def skipped_lines(out: str) -> dict[str, str]:
    return {ln.split(":", 1)[0]: ln for ln in out.splitlines() if ln.split(":", 1)[0] in STAGES}


@pytest.mark.download
@pytest.mark.train
def test_copied_workspace_reruns_nothing_and_refuses_nothing(tmp_path, capsys):
    from poolsieve.pipeline.demo.image_server import ImageServer, free_port
    from poolsieve.pipeline.demo.synthetic_pool import PoolSpec, generate_pool

    first = Workspace.create(tmp_path / "first")
    port = free_port()
    generate_pool(first.root, PoolSpec(num_samples=100, samples_per_file=100, image_size=64, seed=0,
                                       base_url=f"http://127.0.0.1:{port}"))
    (first.root / "experiment.yaml").write_text(json.dumps(EXPERIMENT))
    with ImageServer(first.root / "synthetic", port=port):
        assert cli.main(["run", "-c", str(first.root / "experiment.yaml")]) == 0
    # a subset made from saved subsets records them as inputs (by path)
    both = ["filter", "-w", str(first.root), "--executor", "local", "--spec", "both = all & top"]
    assert cli.main(both) == 0
    capsys.readouterr()
    assert [i["path"] for i in json.loads(first.subset_info_path("both").read_text())["inputs"]] == \
        ["subsets/all.npy", "subsets/top.npy"]
    before = digests(first.root)
    assert {"runs/all/summary.json", "evals/top/summary.json", "filtered/all/meta.json"} <= set(before)

    # Copied as `cp -r` copies (file times not kept: every file is new), then its times set far from the
    # original's, as a sync tool or an object store may leave them: no stage may lean on file times.
    copy = Workspace.open(shutil.copytree(first.root, tmp_path / "mounted" / "elsewhere", copy_function=shutil.copy))
    for p in copy.root.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    first.root.rename(tmp_path / "gone")  # nothing in the copy may lean on the original

    assert cli.main(["run", "-c", str(copy.root / "experiment.yaml")]) == 0  # no image server: nothing fetched
    out = capsys.readouterr().out
    assert "skipped (done)" in out and out.count("0 task(s) evaluated") == 2
    assert cli.main(["evaluate", "-w", str(copy.root), "--executor", "local", "--subset", "all", "--subset", "top",
                     "--synthetic-samples", "24", "--batch-size", "24"]) == 0
    assert capsys.readouterr().out.count("0 task(s) evaluated, 2 up to date") == 2
    assert cli.main([*both[:2], str(copy.root), *both[3:]]) == 0
    assert "skipped (up to date)" in capsys.readouterr().out
    after = digests(copy.root)
    assert after.keys() == before.keys()
    changed = sorted(k for k in before if before[k] != after[k])
    # The download report's "this_run" tells what the last command did (here: nothing); the rest is the same.
    assert changed == ["shards/download_report.json"], changed
    report = json.loads((copy.shards_dir / "download_report.json").read_text())
    assert report["this_run"]["shards_done"] == 0 and report["this_run"]["samples"] == 0
    old_report = json.loads((tmp_path / "gone" / "shards" / "download_report.json").read_text())
    assert {k: v for k, v in report.items() if k != "this_run"} == \
        {k: v for k, v in old_report.items() if k != "this_run"}
    # No record names the original folder; only logs and DataComp's own info.pkl may.
    naming = sorted(k for k in after if str(first.root).encode() in (copy.root / k).read_bytes())
    assert [k for k in naming if not k.endswith(LOGS)] == [], naming


LOGS = ("info.pkl", "params.txt", "out.log", "train.log", ".log")
