"""`poolsieve submit`: a valid subset becomes a submission folder; a bad one is refused clearly."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import write_subset
from poolsieve.core.runtime import Runtime
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import cli
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter
from poolsieve.pipeline.submit import SubmitConfig, run_submit

LOCAL = Runtime(executor="local")


def uid(i: int) -> str:
    return f"{(31 * i + 5) % 101:016x}{i:016x}"


def sorted_pairs(indices) -> np.ndarray:
    return np.sort(uids_to_pairs([uid(i) for i in indices]), order=["f0", "f1"])


@pytest.fixture
def ws(tmp_path):
    w = Workspace.create(tmp_path / "pool")
    w.scores_dir.mkdir()
    for shard in range(2):
        rows = range(10 * shard, 10 * shard + 10)
        pd.DataFrame({"uid": [uid(i) for i in rows], "text": ["a photo of a dog in the park"] * 10,
                      "original_width": [300] * 10, "original_height": [300] * 10,
                      "clip_b32_similarity_score": [i / 20 for i in rows],
                      "status": ["failed_to_decode" if i == 7 else "success" for i in rows]},
                     ).to_parquet(w.scores_dir / f"{shard:05d}.parquet")
    return w


def submit(ws, subset, **kw):
    return run_submit(ws, SubmitConfig(subset=subset, **kw), LOCAL, overwrite=kw.pop("overwrite", False))


def test_submission_folder(ws):
    import os
    import stat

    run_filter(ws, FilterConfig(subsets={"top": "clip_score(fraction=0.5)"}), LOCAL)
    old = os.umask(0o022)
    try:
        out = submit(ws, "top")
    finally:
        os.umask(old)
    folder = ws.root / "submissions" / "top"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
    data = (folder / "top.npy").read_bytes()
    assert data == ws.subset_path("top").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert (folder / "top.npy.sha256").read_text().split()[0] == digest
    record = json.loads((folder / "submission.json").read_text())
    assert record["sha256"] == digest and record["count"] == 10 and record["bytes"] == len(data)
    assert record["spec"]["expression"] == "clip_score(fraction=0.5)" and record["evaluation"] is None
    assert out["status"] == "written"
    assert submit(ws, "top")["status"].startswith("skipped")


def test_evaluation_results_included(ws):
    write_subset(ws.subset_path("few"), sorted_pairs([1, 2, 3]))
    ev = ws.eval_dir("few")
    ev.mkdir(parents=True)
    lines = [{"key": "imagenet1k", "dataset": "ImageNet 1k", "task_type": "zeroshot_classification",
              "group": "ImageNet", "metrics": {"main_metric": 0.25}},
             {"key": "cifar10", "dataset": "CIFAR-10", "task_type": "zeroshot_classification",
              "group": "VTAB", "metrics": {"main_metric": 0.75}}]
    (ev / "eval_results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    submit(ws, "few")
    folder = ws.root / "submissions" / "few"
    record = json.loads((folder / "submission.json").read_text())
    averages = record["evaluation"]["averages"]
    assert record["evaluation"]["tasks"] == 2 and averages["ImageNet"] == 0.25
    assert averages["Average"] is None and averages["incomplete"] == "incomplete: 2 of 38 tasks"
    assert (folder / "eval" / "eval_results.jsonl").read_text() == (ev / "eval_results.jsonl").read_text()
    assert record["spec"] is None and record["datacomp_upload"] is None  # no run, no --scale: no scale


def test_datacomp_upload_layout(ws):
    """What DataComp's evaluate.py pushes (its push_files_to_hub): {scale}_scale/results.jsonl, the
    evaluation's eval_results.jsonl, and {scale}_scale/samples/<uid file name>, the uid file's bytes."""
    from poolsieve.eval.tasks import DATACOMP_TASKS

    write_subset(ws.subset_path("few"), sorted_pairs([1, 2, 3]))
    ev = ws.eval_dir("few")
    ev.mkdir(parents=True)
    lines = [{"key": t.key, "dataset": t.name, "metrics": {"main_metric": 0.5 if t.main_metric else None}}
             for t in DATACOMP_TASKS]
    (ev / "eval_results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (ws.run_dir("few")).mkdir(parents=True)
    (ws.run_dir("few") / "summary.json").write_text(json.dumps({"scale": "small", "model": "ViT-B-32"}))
    out = submit(ws, "few")
    folder = ws.root / "submissions" / "few"
    upload = folder / "small_scale"
    assert out["datacomp_upload"] == "small_scale"
    assert sorted(str(p.relative_to(upload)) for p in upload.rglob("*")) == [
        "results.jsonl", "samples", "samples/few.npy"]
    assert (upload / "results.jsonl").read_bytes() == (ev / "eval_results.jsonl").read_bytes()
    assert (upload / "samples" / "few.npy").read_bytes() == ws.subset_path("few").read_bytes()
    record = json.loads((folder / "submission.json").read_text())
    assert record["evaluation"]["averages"]["Average"] == 0.5
    # --scale names another scale
    out = run_submit(ws, SubmitConfig(subset="few", scale="medium"), LOCAL, overwrite=True)
    assert (folder / "medium_scale" / "results.jsonl").exists() and not (folder / "small_scale").exists()


def test_bad_dtype_refused(ws, tmp_path):
    path = tmp_path / "wrong.npy"
    np.save(path, np.arange(4, dtype=np.int64))
    with pytest.raises(InputError, match=r"wrong.npy: subset dtype is int64, expected"):
        submit(ws, str(path))


def test_unsorted_refused(ws, tmp_path):
    path = tmp_path / "unsorted.npy"
    np.save(path, sorted_pairs([1, 2, 3])[::-1])
    with pytest.raises(InputError, match=r"unsorted.npy: subset is not sorted: row 1 is smaller than row 0"):
        submit(ws, str(path))


def test_repeated_uids_accepted(ws, tmp_path):
    """DataComp's format allows upsampling: a uid may repeat in a (sorted) submission; it is kept as given."""
    path = tmp_path / "twice.npy"
    pairs = sorted_pairs([1, 2, 3])
    np.save(path, np.sort(np.concatenate([pairs, pairs[1:2], pairs[1:2]]), order=["f0", "f1"]))
    out = submit(ws, str(path))
    assert (out["count"], out["distinct_uids"]) == (5, 3)
    folder = ws.root / "submissions" / "twice"
    assert (folder / "twice.npy").read_bytes() == path.read_bytes()
    assert np.array_equal(np.load(folder / "twice.npy"), np.load(path))
    # a repeat of a uid outside the pool is still refused, and so is an unsorted file with repeats
    np.save(tmp_path / "foreign.npy", sorted_pairs([1, 99, 99]))
    with pytest.raises(InputError, match=r"foreign.npy: 1 of 2 uids are not in the pool"):
        submit(ws, str(tmp_path / "foreign.npy"))
    np.save(tmp_path / "unsorted.npy", np.concatenate([pairs, pairs[:1]]))
    with pytest.raises(InputError, match=r"unsorted.npy: subset is not sorted"):
        submit(ws, str(tmp_path / "unsorted.npy"))


def test_unknown_uids_refused(ws, tmp_path):
    path = tmp_path / "foreign.npy"
    # row 7 failed to decode (not a member) and 99 was never in the pool
    np.save(path, sorted_pairs([1, 7, 99]))
    with pytest.raises(InputError, match=r"foreign.npy: 2 of 3 uids are not in the pool, e\.g\. row"):
        submit(ws, str(path))


def test_missing_and_replaced(ws, tmp_path):
    with pytest.raises(InputError, match="nope.npy: subset file does not exist"):
        submit(ws, "nope")
    with pytest.raises(ConfigError, match="--subset"):
        submit(ws, None)
    write_subset(ws.subset_path("s"), sorted_pairs([1]))
    submit(ws, "s")
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2]))
    with pytest.raises(ConfigError, match="another uid file"):
        submit(ws, "s")
    assert run_submit(ws, SubmitConfig(subset="s"), LOCAL, overwrite=True)["count"] == 2


def test_cli_exit_codes(ws, tmp_path, capsys):
    write_subset(ws.subset_path("ok"), sorted_pairs([0, 1]))
    assert cli.main(["submit", "-w", str(ws.root), "--executor", "local", "--subset", "ok"]) == 0
    assert "sha256" in capsys.readouterr().out
    np.save(tmp_path / "bad.npy", sorted_pairs([1, 2])[::-1])
    assert cli.main(["submit", "-w", str(ws.root), "--executor", "local", "--subset", str(tmp_path / "bad.npy")]) == 2
    assert "bad.npy: subset is not sorted" in capsys.readouterr().err
