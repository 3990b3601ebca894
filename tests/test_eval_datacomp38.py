"""End to end: ``evaluate --tasks datacomp38 --data-root DIR`` on a miniature of the folder DataComp's
``download_evalsets.py`` leaves (wds_<key>_test folders plus the ``hf_cache`` of the retrieval sets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_minisets import MiniHub, all_repos, fill_hf_cache, write_wds_folders
from resources import starts

from poolsieve.eval.aggregate import DATACOMP_GROUPS, RESULTS_FILE, aggregate, read_results
from poolsieve.eval.tasks import DATACOMP_TASKS, SCORED_TASKS


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The miniature's batches are tiny: on two shared cores, torch's second thread costs 10-30x in waiting
    (encode_text of two prompts: 140-410 ms with 2 threads, 12-16 ms with 1, at load average 7)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
@starts("subprocess")  # fills datasets' cache in a child process
def evalsets(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsets")
    repos = all_repos()
    write_wds_folders(root, repos)
    with MiniHub(repos) as hub:
        fill_hf_cache(root, hub.endpoint, [t.hf_dataset for t in DATACOMP_TASKS if t.source == "hf"])
    return root


def test_datacomp38_on_a_datacomp_download_folder(evalsets, tmp_path, capsys, monkeypatch):
    from poolsieve.pipeline import cli

    assert sorted(p.name for p in evalsets.iterdir() if not p.name.startswith(".")) == sorted(
        [t.wds_name for t in DATACOMP_TASKS if t.source == "wds"] + ["hf_cache"])
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may be fetched: all is local
    out = tmp_path / "ev"
    code = cli.main(["evaluate", "-w", str(tmp_path / "ws"), "--executor", "local", "--model", "poolsieve-tiny",
                     "--output", str(out), "--tasks", "datacomp38", "--data-root", str(evalsets),
                     "--batch-size", "8"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    lines = [json.loads(s) for s in (out / RESULTS_FILE).read_text().splitlines()]
    assert [r["key"] for r in lines] == [t.key for t in DATACOMP_TASKS]
    scored = [r for r in lines if r["metrics"]["main_metric"] is not None]
    assert len(scored) == 38 and {r["dataset"] for r in scored} == {t.name for t in SCORED_TASKS}
    for r in scored:
        assert 0.0 <= r["metrics"]["main_metric"] <= 1.0 and set(r) >= {"key", "dataset", "metrics"}
    by_name = {r["dataset"]: r["metrics"]["main_metric"] for r in scored}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["Average"] == pytest.approx(np.mean(list(by_name.values())))
    assert summary["groups"]["ImageNet"] == by_name["ImageNet 1k"]
    for group, names in DATACOMP_GROUPS.items():
        assert summary["groups"][group] == pytest.approx(np.mean([by_name[n] for n in names]))
    assert "Average" in printed.out and "incomplete" not in printed.out
    fairface = next(r for r in lines if r["key"] == "fairness/fairface")["metrics"]
    assert {"acc_race_avg", "acc_gender_avg", "acc_age_avg", "toxicity_crime_avg"} <= set(fairface)
    (tmp_path / "complete.jsonl").write_text((out / RESULTS_FILE).read_text())

    # One task less: no Average, the table says how many of the 38 there are.
    results = read_results(out / RESULTS_FILE)
    results.pop("vtab/svhn")
    agg = aggregate(results)
    assert agg["Average"] is None and agg["VTAB"] is None and agg["incomplete"] == "incomplete: 37 of 38 tasks"
    assert agg["Retrieval"] is not None


def test_missing_set_names_the_folder(tmp_path, capsys):
    from poolsieve.pipeline import cli

    code = cli.main(["evaluate", "-w", str(tmp_path / "ws"), "--executor", "local", "--model", "poolsieve-tiny",
                     "--output", str(tmp_path / "ev"), "--tasks", "cifar10,mscoco_2014_5k_test_image_text_retrieval",
                     "--data-root", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "wds_cifar10_test" in err[0]


def test_wilds_and_fairness_tasks_on_their_webdatasets(tmp_path, capsys):
    """The tasks with DataComp's own metrics (WILDS, Dollar Street, GeoDE, FairFace, UTKFace) from their
    webdataset folders alone: no datasets cache, no child process."""
    from poolsieve.pipeline import cli

    special = [t for t in DATACOMP_TASKS if t.task_type in ("wilds", "fairness")]
    write_wds_folders(tmp_path / "sets", all_repos(special))
    out = tmp_path / "ev"
    code = cli.main(["evaluate", "-w", str(tmp_path / "ws"), "--executor", "local", "--model", "poolsieve-tiny",
                     "--output", str(out), "--tasks", ",".join(t.key for t in special),
                     "--data-root", str(tmp_path / "sets"), "--batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    lines = {json.loads(s)["key"]: json.loads(s)["metrics"] for s in (out / RESULTS_FILE).read_text().splitlines()}
    assert list(lines) == [t.key for t in special]
    for task in special:
        main = lines[task.key]["main_metric"]
        assert (main is None) == (task.main_metric is None) and (main is None or 0.0 <= main <= 1.0), task.key
    assert {"acc_race_avg", "acc_gender_avg", "acc_age_avg", "toxicity_crime_avg"} <= set(lines["fairness/fairface"])
