"""The report's Evaluation section answers the user's question (issue 26, item 3): every task that was run
is a row, the user's own tasks first, with classes, chance level, test images and a 95% Wilson interval
per score; "best" only where the intervals do not overlap."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from poolsieve.core.errors import InputError
from poolsieve.eval.aggregate import (
    OTHER_RESULTS_FILE,
    RESULTS_FILE,
    read_results,
    result_line,
    task_facts,
    wilson_interval,
    write_results,
)
from poolsieve.eval.tasks import CLASSIFICATION, RETRIEVAL, SCORED_TASKS, TASKS, Task
from poolsieve.pipeline.inspect.evaluation import Score, eval_section, separated_best

CLIPART = Task("custom/clipart", "clipart", CLASSIFICATION, "acc1", 0)
COLOURS = {"crimson": (200, 20, 40), "orange": (240, 140, 20), "gold": (230, 200, 30), "olive": (120, 130, 30),
           "green": (30, 160, 60), "teal": (20, 140, 140), "sky": (90, 170, 240), "navy": (20, 40, 120),
           "violet": (140, 60, 200), "pink": (240, 120, 190), "brown": (120, 70, 30)}


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(64, 177), (0, 20), (20, 20), (1, 3), (500, 1000), (9, 600)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k / n, n) == pytest.approx((ci.low, ci.high), abs=1e-6)


def test_task_facts_come_from_the_line_else_the_registry():
    own = result_line(CLIPART, {"acc1": 0.36, "main_metric": 0.36, "num_samples": 177, "num_classes": 11}, 1.0)
    facts = task_facts(own)
    assert (facts.metric, facts.classes, facts.images) == ("acc1", 11, 177) and facts.chance == pytest.approx(1 / 11)
    assert facts.interval(0.36) == wilson_interval(0.36, 177)
    # a DataComp line from before the counts were written: DataComp's test set size and classes
    old = {"key": "vtab/pets", "dataset": "Oxford-IIIT Pet", "metrics": {"main_metric": 0.5}}
    pets = task_facts(old)
    assert (pets.metric, pets.classes, pets.images) == ("mean_per_class_recall", 37, 3669) and pets.chance == 1 / 37
    # a user's retrieval task: its recall is no share of images, so no interval; no chance level known
    retrieval = task_facts(result_line(Task("custom/caps", "caps", RETRIEVAL, "mean_recall@1", 0),
                                       {"main_metric": 0.2, "num_samples": 50}, 1.0))
    assert retrieval.metric == "mean_recall@1" and retrieval.interval(0.2) is None and retrieval.chance is None
    assert task_facts({"key": "wilds/fmow", "dataset": "FMoW", "metrics": {}}).chance == TASKS["wilds/fmow"].random_score


@pytest.mark.parametrize("metrics,problem", [
    ({"main_metric": 0.4, "num_samples": -3}, "'num_samples' must be a whole number of at least 1 or null, got a int"),
    ({"main_metric": 0.4, "num_samples": 17.5}, "'num_samples' must be a whole number of at least 1 or null, got 17.5"),
    ({"main_metric": 0.4, "num_classes": True}, "'num_classes' must be a whole number of at least 1 or null, got a bool"),
    ({"main_metric": 0.4, "num_classes": "11"}, "'num_classes' must be a whole number of at least 1 or null, got a str"),
])
def test_the_reader_checks_the_counts_the_report_computes_with(tmp_path, metrics, problem):
    path = tmp_path / "other_results.jsonl"
    path.write_text(json.dumps(result_line(CLIPART, {"main_metric": 0.1}, 1.0)) + "\n"
                    + json.dumps({"key": "custom/x", "dataset": "x", "metrics": metrics}) + "\n")
    with pytest.raises(InputError) as e:
        read_results(path)
    assert str(e.value).startswith(f"{path}: line 2: {problem}")
    path.write_text(json.dumps({"key": "custom/x", "dataset": "x", "metric": 3, "metrics": {}}) + "\n")
    with pytest.raises(InputError, match="line 1: 'metric' must be a metric's name or null"):
        read_results(path)


def test_best_only_where_the_intervals_do_not_overlap():
    def score(k: int, n: int = 177) -> Score:
        return Score(k / n, wilson_interval(k / n, n))

    assert separated_best({"a": score(64), "b": score(77)}) is None  # issue 26: a 13-image difference
    assert separated_best({"a": score(40), "b": score(110)}) == "b"
    assert separated_best({"a": score(40), "b": score(110), "c": score(100)}) is None  # b and c overlap
    assert separated_best({"a": score(40)}) is None
    assert separated_best({"a": Score(0.2, None), "b": Score(0.9, None)}) is None  # no interval, no verdict


def write_task_folder(folder: Path, n: int, seed: int = 0) -> None:
    """A user's own 11-class task in clip_benchmark's webdataset layout: flat colour patches with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    (folder / "test").mkdir(parents=True)
    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for i in range(n):
            label = int(rng.integers(len(names)))
            pixels = np.clip(np.array(COLOURS[names[label]]) + rng.normal(0, 12, (32, 32, 3)), 0, 255)
            buf = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
            for name, data in ((f"s{i:05d}.png", buf.getvalue()), (f"s{i:05d}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (folder / "test" / "nshards.txt").write_text("1\n")
    (folder / "classnames.txt").write_text("\n".join(names) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a patch of {c}.\nthe colour {c}.\n")


def task_row(page: str, task: str) -> str:
    rows = re.findall(r"<tr class=\"kind-[a-z]+\"><td>(.*?)</tr>", page)
    return next(r for r in rows if r.startswith(task))


def test_a_users_own_task_is_first_class_in_the_report(tmp_path, capsys):
    """``evaluate --tasks FOLDER`` twice (two untrained models), then ``inspect --html``: the task is a row
    with 11 classes, chance 0.091, 177 test images and each score's interval; no "0 of 38"."""
    import torch

    from poolsieve.pipeline.cli import main

    folder = tmp_path / "clipart"
    write_task_folder(folder, 177)
    ws = tmp_path / "ws"
    common = ["-w", str(ws), "--executor", "local", "--model", "poolsieve-tiny", "--tasks", str(folder)]
    for seed, name in ((0, "basic"), (1, "dedup")):
        torch.manual_seed(seed)  # an untrained model, its initial weights seeded
        assert main(["evaluate", *common, "--output", str(ws / "evals" / name)]) == 0
    lines = {name: json.loads((ws / "evals" / name / OTHER_RESULTS_FILE).read_text()) for name in ("basic", "dedup")}
    for line in lines.values():
        assert line["metrics"]["num_samples"] == 177 and line["metrics"]["num_classes"] == 11
        assert line["metric"] == "acc1" and not (ws / "evals" / "basic" / RESULTS_FILE).exists()
    assert main(["inspect", "-w", str(ws), "--executor", "local", "--html"]) == 0
    capsys.readouterr()
    page = (ws / "report" / "index.html").read_text()
    section = page[page.index('id="evaluation"'):]
    assert "of 38" not in section and "<details" not in section and "DataComp tasks scored" not in section
    row = task_row(section, "clipart")
    cells = re.findall(r"<td[^>]*>(.*?)</td>", "<td>" + row)
    assert cells[1:5] == ["your task", "11", "0.091", "177"], cells
    for name in ("basic", "dedup"):
        acc = lines[name]["metrics"]["acc1"]
        lo, hi = wilson_interval(acc, 177)
        assert f"{acc:.3f}" in row and f"{lo:.3f}–{hi:.3f}" in row
    scores = {n: Score(lines[n]["metrics"]["acc1"], wilson_interval(lines[n]["metrics"]["acc1"], 177)) for n in lines}
    assert ("best" in row) == (separated_best(scores) is not None)


def test_datacomp_groups_sit_above_every_task_and_own_tasks_come_first(tmp_path):
    from poolsieve.core.workspace import Workspace

    ws = Workspace.create(tmp_path / "ws")
    rng = np.random.default_rng(3)
    for k, name in enumerate(("basic", "clip30")):
        folder = ws.eval_dir(name)
        folder.mkdir(parents=True)
        write_results(folder / RESULTS_FILE, [result_line(t, {"main_metric": float(rng.uniform(0.1, 0.6))}, 0.1)
                                              for t in SCORED_TASKS[:38 if k == 0 else 20]])
        own = (64 + 13 * k) / 177  # 64 and 77 of 177 images right: intervals overlap
        write_results(folder / OTHER_RESULTS_FILE, [
            result_line(CLIPART, {"acc1": own, "main_metric": own, "num_samples": 177, "num_classes": 11}, 1.0),
            result_line(TASKS["synthetic_shape"], {"acc1": 0.4 + 0.3 * k, "main_metric": 0.4 + 0.3 * k,
                                                   "num_samples": 600, "num_classes": 3}, 1.0)])
    page = eval_section(ws.root, ["basic", "clip30"])
    assert page.index("DataComp tasks scored") < page.index("clipart") < page.index("Synthetic shape") \
        < page.index("Caltech-101")
    assert "38 of 38" in page and "20 of 38" in page and "incomplete: 20 of 38 tasks" in page
    assert "best" not in task_row(page, "clipart") and "best" in task_row(page, "Synthetic shape")
    assert task_row(page, "Synthetic shape").count("best-mark") == 1


def test_results_with_the_counts_stay_readable_the_way_datacomp_aggregates_them(tmp_path):
    """DataComp's aggregate_scores.py reads the file with pandas (``read_json(lines=True)``), spreads each
    ``metrics`` dict into columns beside the top-level keys and wants 38 main metrics: the new keys add
    columns without a clash."""
    import pandas as pd

    path = tmp_path / RESULTS_FILE
    write_results(path, [result_line(t, {"acc1": 0.3, "main_metric": 0.3, "num_samples": t.size,
                                         "num_classes": t.num_classes}, 0.1) for t in SCORED_TASKS])
    df = pd.read_json(path, lines=True)
    df = pd.concat([df.drop(["metrics"], axis=1), df["metrics"].apply(pd.Series)], axis=1)
    assert df.columns.is_unique and {"metric", "num_samples", "num_classes"} <= set(df.columns)
    df = df.dropna(subset=["main_metric"])
    assert len(df) == 38 and dict(zip(df.dataset, df.main_metric, strict=True))["ImageNet 1k"] == pytest.approx(0.3)
