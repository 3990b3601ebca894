"""The evaluate stage: task registry, metrics against brute force, results files, hub/local datasets."""

from __future__ import annotations

import functools
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.models import ModelSpec
from poolsieve.core.shapes import COLOURS, generate_clean_pairs
from poolsieve.eval.aggregate import aggregate, read_results
from poolsieve.eval.evaluator import EvalConfig, evaluate_model
from poolsieve.eval.hub_datasets import dataset_location
from poolsieve.eval.metrics import classification_metrics
from poolsieve.eval.synthetic_tasks import HELD_OUT_SEEDS, make_synthetic_task
from poolsieve.eval.task_spec import resolve_tasks
from poolsieve.eval.tasks import (
    CLASSIFICATION,
    DATACOMP_TASKS,
    DIST_SHIFTS,
    IMAGENET,
    RETRIEVAL_GROUP,
    SCORED_TASKS,
    TASK_TYPES,
    VTAB,
    get_task,
)
from poolsieve.eval.zeroshot import evaluate_task


# ------------------------------------------------------------------------------------ registry
def test_registry_has_datacomps_38_tasks():
    assert len(DATACOMP_TASKS) == 40 and len(SCORED_TASKS) == 38  # FairFace, UTKFace: reported, not scored
    assert {t.name for t in DATACOMP_TASKS} - {t.name for t in SCORED_TASKS} == {"FairFace", "UTKFace"}
    assert len({t.key for t in DATACOMP_TASKS}) == 40 and len({t.name for t in DATACOMP_TASKS}) == 40
    groups = {g: sum(t.group == g for t in DATACOMP_TASKS) for g in (IMAGENET, DIST_SHIFTS, VTAB, RETRIEVAL_GROUP)}
    assert groups == {IMAGENET: 1, DIST_SHIFTS: 6, VTAB: 13, RETRIEVAL_GROUP: 3}
    for t in SCORED_TASKS:
        assert t.task_type in TASK_TYPES and t.main_metric and t.size > 0
        assert t.wds_name.startswith("wds_") and "/" not in t.wds_name and t.hub_repo.startswith("djghosh/")
        if t.task_type == CLASSIFICATION:
            assert t.num_classes >= 2 and 0 < t.random_score <= 0.5 + 1e-5
            assert t.main_metric in ("acc1", "mean_per_class_recall")
    assert get_task("vtab/cifar100").wds_name == "wds_vtab-cifar100_test"
    assert get_task("CIFAR-100") is get_task("cifar100") is get_task("vtab/cifar100")
    assert [t.key for t in resolve_tasks("synthetic")] == ["synthetic_shape", "synthetic_colour"]
    assert len(resolve_tasks("datacomp38,synthetic")) == 42
    assert get_task("geode").wds_name == "wds_geode_test" and get_task("iwildcam").wds_name == "wds_wilds-iwildcam_test"
    assert get_task("geode").clip_benchmark_name == "wds/geode"
    assert get_task("MSCOCO").source == "hf" and get_task("WinoGAViL").hf_dataset == "nlphuji/winogavil"
    with pytest.raises(ConfigError, match="unknown task"):
        resolve_tasks("cifar10,nope")


def test_aggregate_group_averages():
    results = {t.key: {"key": t.key, "dataset": t.name, "group": t.group,
                       "metrics": {"main_metric": i / 100 if t.main_metric else None}}
               for i, t in enumerate(DATACOMP_TASKS)}
    agg = aggregate(results)
    values = {t.key: i / 100 for i, t in enumerate(DATACOMP_TASKS) if t.main_metric}
    assert len(values) == 38
    assert agg["ImageNet"] == pytest.approx(values["imagenet1k"])
    assert agg["VTAB"] == pytest.approx(np.mean([values[t.key] for t in DATACOMP_TASKS if t.group == VTAB]))
    assert agg["Average"] == pytest.approx(np.mean(list(values.values()))) and agg["incomplete"] is None
    assert agg["Synthetic"] is None
    del results["mnist"]
    agg = aggregate(results)
    assert agg["Average"] is None and agg["incomplete"] == "incomplete: 37 of 38 tasks"
    assert agg["VTAB"] is not None  # MNIST is in no group


# ------------------------------------------------------------------------------------- metrics
def test_classification_metrics_match_brute_force():
    import torch

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 7)).astype(np.float32)
    target = rng.integers(0, 7, size=200)
    m = classification_metrics(torch.from_numpy(logits), torch.from_numpy(target), 7)
    order = np.argsort(-logits, axis=1)
    assert m["acc1"] == pytest.approx(np.mean(order[:, 0] == target))
    assert m["acc5"] == pytest.approx(np.mean([target[i] in order[i, :5] for i in range(200)]))
    recalls = [np.mean(order[target == c, 0] == c) for c in range(7)]
    assert m["mean_per_class_recall"] == pytest.approx(np.mean(recalls))
    assert classification_metrics(torch.from_numpy(logits[:, :3]), torch.from_numpy(target % 3), 3)["acc5"] is None


def _random_model():
    import torch

    from poolsieve.core.models import load_model

    grad = torch.is_grad_enabled()
    torch.manual_seed(0)
    out = load_model(ModelSpec("poolsieve-tiny"))
    torch.set_grad_enabled(grad)
    return out


def _brute_force_accuracy(model, preprocess, tokenizer, images, labels, classnames, templates):
    """Prompt-ensemble zero-shot accuracy computed directly with the model."""
    import torch
    from PIL import Image

    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        weights = []
        for c in classnames:
            emb = torch.nn.functional.normalize(model.encode_text(tokenizer([t.format(c=c) for t in templates])), dim=-1)
            mean = emb.mean(0)
            weights.append(mean / mean.norm())
        pred = (img @ torch.stack(weights, 1)).argmax(1).numpy()
    return float(np.mean(pred == np.asarray(labels)))


def test_synthetic_tasks_are_held_out_and_scored_like_brute_force():
    model, preprocess, tokenizer = _random_model()
    data = make_synthetic_task("synthetic_colour", 48)
    assert data.classnames == list(COLOURS) and len(data.images) == 48
    assert all("{c}" in t for t in data.templates)
    # Held out: none of these images is in a seed set drawn with the small seeds the pool/tests use.
    seen = {jpeg for seed in range(3) for _u, jpeg, *_ in generate_clean_pairs(200, seed, 64)}
    assert not seen & set(data.images)
    assert make_synthetic_task("synthetic_colour", 48).images == data.images  # deterministic
    assert len(set(HELD_OUT_SEEDS.values())) == 2

    metrics = evaluate_task(get_task("synthetic_colour"), model, preprocess, tokenizer, batch_size=16,
                            synthetic_samples=48)
    expected = _brute_force_accuracy(model, preprocess, tokenizer, data.images, data.labels, data.classnames,
                                     data.templates)
    assert metrics["acc1"] == pytest.approx(expected, abs=1e-6)
    assert metrics["main_metric"] == metrics["acc1"] and metrics["num_samples"] == 48


# ---------------------------------------------------------------------------------- results files
def test_results_jsonl_summary_and_resume(tmp_path, capsys):
    """Through the CLI: one results line per task, group averages, and a rerun that skips done tasks."""
    import torch

    from poolsieve.eval import cli as eval_cli
    from poolsieve.pipeline import cli

    ws = tmp_path / "ws"
    run = ws / "runs" / "clean"
    run.mkdir(parents=True)
    model, _, _ = _random_model()
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, run / "epoch_1.pt")
    (run / "summary.json").write_text(json.dumps({"model": "poolsieve-tiny", "checkpoint": str(run / "epoch_1.pt")}))
    args = cli.stage_parser("evaluate").parse_args(["-w", str(ws), "--executor", "local", "--subset", "clean",
                                      "--synthetic-samples", "30", "--batch-size", "16"])
    ctx = cli.make_context(args)
    assert cli.run_stage(eval_cli.STAGE, ctx, args) == 0
    out = capsys.readouterr().out
    assert "Synthetic shape" in out and "Average" not in out  # DataComp's average needs DataComp's tasks

    assert not (ws / "evals" / "clean" / "eval_results.jsonl").exists()
    results_path = ws / "evals" / "clean" / "other_results.jsonl"
    lines = [json.loads(s) for s in results_path.read_text().splitlines()]
    assert [r["key"] for r in lines] == ["synthetic_shape", "synthetic_colour"]
    for r in lines:
        assert set(r) >= {"key", "dataset", "task_type", "group", "metrics", "seconds"}
        assert 0 <= r["metrics"]["main_metric"] <= 1 and r["metrics"]["num_samples"] == 30
    summary = json.loads((ws / "evals" / "clean" / "summary.json").read_text())
    mean = np.mean([r["metrics"]["main_metric"] for r in lines])
    assert summary["groups"]["Synthetic"] == pytest.approx(mean) and summary["groups"]["Average"] is None

    # A rerun finds both tasks done and evaluates nothing; a damaged file is reported by name.
    again = evaluate_model(ModelSpec("poolsieve-tiny", str(run / "epoch_1.pt")), "synthetic",
                           ws / "evals" / "clean", EvalConfig(synthetic_samples=30))
    assert (again["evaluated"], again["skipped"]) == (0, 2)
    assert again["tasks"] == summary["tasks"]
    results_path.write_text(results_path.read_text() + "{broken\n")
    with pytest.raises(InputError, match="other_results.jsonl: line 3 is not valid JSON"):
        read_results(results_path)

    missing = cli.stage_parser("evaluate").parse_args(["-w", str(ws), "--executor", "local", "--subset", "nope"])
    with pytest.raises(InputError, match="runs/nope/summary.json"):
        cli.run_stage(eval_cli.STAGE, cli.make_context(missing), missing)


# ------------------------------------------------------------------------------ hub datasets
def _write_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_classification_wds(folder: Path, n: int) -> tuple[list[bytes], list[int], list[str], list[str]]:
    """clip_benchmark's wds layout with coloured shapes labelled by colour (as for a DataComp task)."""
    classnames = list(COLOURS)
    templates = ["a photo of a {c} circle.", "a photo of a {c} square."]
    images, labels = [], []
    (folder / "test").mkdir(parents=True)
    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for i, (_uid, jpeg, _cap, _shape, colour) in enumerate(generate_clean_pairs(n, 424242, 32)):
            images.append(jpeg)
            labels.append(classnames.index(colour))
            _write_member(tar, f"s{i:05d}.jpg", jpeg)
            _write_member(tar, f"s{i:05d}.cls", str(labels[-1]).encode())
    (folder / "test" / "nshards.txt").write_text("1\n")
    (folder / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return images, labels, classnames, templates


def _write_retrieval_wds(folder: Path, n: int) -> tuple[list[bytes], list[list[str]]]:
    images, captions = [], []
    (folder / "test").mkdir(parents=True)
    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for i, (_uid, jpeg, cap, shape, colour) in enumerate(generate_clean_pairs(n, 515151, 32)):
            caps = [cap, f"a {colour} {shape}"]
            images.append(jpeg)
            captions.append(caps)
            _write_member(tar, f"s{i:05d}.jpg", jpeg)
            _write_member(tar, f"s{i:05d}.txt", "\n".join(caps).encode())
    (folder / "test" / "nshards.txt").write_text("1\n")
    (folder / "dataset_type.txt").write_text("retrieval\n")
    return images, captions


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D401 - keep test output clean
        pass


@pytest.fixture
def hub_mirror(tmp_path):
    """A 127.0.0.1 server with the hub's url layout: /datasets/<user>/<repo>/resolve/main/<file>."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.subprocess
def test_classification_from_local_folder_and_hub_mirror(tmp_path, hub_mirror, monkeypatch):
    model, preprocess, tokenizer = _random_model()
    task = get_task("cifar10")
    local = tmp_path / "evalsets"
    images, labels, classnames, templates = _write_classification_wds(local / task.wds_name, 40)
    assert dataset_location(task, local) == str(local / task.wds_name)
    from_folder = evaluate_task(task, model, preprocess, tokenizer, batch_size=16, data_root=str(local))
    expected = _brute_force_accuracy(model, preprocess, tokenizer, images, labels, classnames, templates)
    assert from_folder["acc1"] == pytest.approx(expected, abs=1e-6)

    mirror_root, endpoint = hub_mirror
    repo_dir = mirror_root / "datasets" / task.hub_repo / "resolve" / "main"
    repo_dir.parent.mkdir(parents=True)
    (local / task.wds_name).rename(repo_dir)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert dataset_location(task) == f"{endpoint}/datasets/djghosh/wds_cifar10_test/resolve/main"
    from_hub = evaluate_task(task, model, preprocess, tokenizer, batch_size=16)
    assert from_hub == from_folder

    monkeypatch.setenv("HF_ENDPOINT", endpoint + "/missing")
    with pytest.raises(InputError, match="cannot read the test set of cifar10"):
        evaluate_task(task, model, preprocess, tokenizer)
    with pytest.raises(InputError, match="nshards.txt"):
        dataset_location(task, tmp_path / "nowhere")


def test_retrieval_matches_brute_force_recall(tmp_path):
    import torch
    from PIL import Image

    from poolsieve.eval.custom_tasks import custom_task

    model, preprocess, tokenizer = _random_model()
    images, captions = _write_retrieval_wds(tmp_path / "my_captions", 24)
    task = custom_task(tmp_path / "my_captions")  # a user's own retrieval task (dataset_type.txt)
    assert task.task_type == "zeroshot_retrieval" and task.name == "my_captions"
    metrics = evaluate_task(task, model, preprocess, tokenizer, batch_size=10)

    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(
            torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])), dim=-1)
        flat = [c for caps in captions for c in caps]
        owner = np.array([i for i, caps in enumerate(captions) for _ in caps])
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(flat)), dim=-1)
        sim = (txt @ img.T).numpy()
    image_r1 = np.mean(sim.argmax(1) == owner)  # text -> image
    text_r1 = np.mean([owner[sim[:, i].argmax()] == i for i in range(len(images))])  # image -> text
    assert metrics["image_retrieval_recall@1"] == pytest.approx(image_r1, abs=1e-6)
    assert metrics["text_retrieval_recall@1"] == pytest.approx(text_r1, abs=1e-6)
    assert metrics["main_metric"] == pytest.approx((image_r1 + text_r1) / 2, abs=1e-6)


def test_custom_task_by_path_and_registered_name(tmp_path, capsys):
    """A clip_benchmark wds folder evaluates by path or registered name and keeps its own name."""
    from poolsieve.eval.custom_tasks import custom_task
    from poolsieve.pipeline import cli

    folder = tmp_path / "clipart_category"
    images, labels, classnames, templates = _write_classification_wds(folder, 20)
    task = custom_task(folder)
    assert (task.name, task.key, task.task_type) == ("clipart_category", "custom/clipart_category", CLASSIFICATION)
    model, preprocess, tokenizer = _random_model()
    metrics = evaluate_task(task, model, preprocess, tokenizer, batch_size=8)
    expected = _brute_force_accuracy(model, preprocess, tokenizer, images, labels, classnames, templates)
    assert metrics["acc1"] == pytest.approx(expected, abs=1e-6) and metrics["main_metric"] == metrics["acc1"]

    ws = tmp_path / "ws"
    args = ["evaluate", "-w", str(ws), "--executor", "local", "--model", "poolsieve-tiny", "--tasks", str(folder)]
    assert cli.main(args) == 0
    line = json.loads((ws / "evals" / "poolsieve-tiny" / "other_results.jsonl").read_text())
    assert line["dataset"] == "clipart_category" and line["key"] == "custom/clipart_category"
    assert "clipart_category" in capsys.readouterr().out
    from poolsieve.core.workspace import Workspace
    from poolsieve.pipeline.inspect.stage import inspect_workspace

    assert inspect_workspace(Workspace.open(ws))["evals"]["poolsieve-tiny"] == {"clipart_category": line["metrics"]["main_metric"]}
    assert cli.main(["inspect", "-w", str(ws), "--executor", "local", "--html"]) == 0
    assert "<td>clipart_category</td>" in (ws / "report" / "index.html").read_text()

    # registered in the config under another name; no templates file: clip_benchmark's defaults
    (folder / "zeroshot_classification_templates.txt").unlink()
    config = tmp_path / "c.yaml"
    config.write_text(f"evaluate:\n  custom_tasks:\n    clipart: {folder}\n")
    assert cli.main(["evaluate", "-w", str(ws), "-c", str(config), "--executor", "local", "--model",
                     "poolsieve-tiny", "--tasks", "clipart", "--output", str(tmp_path / "ev2")]) == 0
    line = json.loads((tmp_path / "ev2" / "other_results.jsonl").read_text())
    assert line["dataset"] == "clipart" and line["key"] == "custom/clipart"
    assert cli.main(["evaluate", "-w", str(ws), "--executor", "local", "--model", "poolsieve-tiny",
                     "--tasks", str(tmp_path / "nope_dir/")]) == 2
    assert "not a task folder" in capsys.readouterr().err
