"""The train stage: fixed budgets, real open_clip training runs, loadable checkpoints, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from factories import make_samples

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.train.budget import plan_budget
from poolsieve.train.config import TrainConfig
from poolsieve.train.runner_io import parse_train_line
from poolsieve.train.scales import SCALES, get_scale
from poolsieve.train.shards import count_samples, list_shards
from poolsieve.train.trainer import train_clip

BUDGET = 512  # 8 steps of 64: seconds on two cores


def write_wds(folder: Path, n: int, seed: int, per_shard: int = 200, stats: bool = True) -> list[Path]:
    """Resharder-style shards ``{:08d}.tar`` (jpg/txt/json members) with ``{:08d}_stats.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = make_samples(n, seed=seed, image_size=32)
    tars = []
    for shard, lo in enumerate(range(0, n, per_shard)):
        chunk = samples[lo:lo + per_shard]
        path = folder / f"{shard:08d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, s in enumerate(chunk):
                key = f"{shard:08d}{i:04d}"
                for ext, data in (("jpg", s.jpeg), ("txt", s.caption.encode()),
                                  ("json", json.dumps({"uid": s.uid}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        if stats:
            (folder / f"{shard:08d}_stats.json").write_text(json.dumps({"successes": len(chunk)}))
        tars.append(path)
    return tars


def test_scale_table_follows_datacomp():
    """DataComp's scale_configs (batch, model, lr, warmup, beta2), each budget as DataComp's launcher trains
    it: ``budget // 5`` per epoch in whole batches, a multiple of its 4 workers' batches (open_clip)."""
    def datacomp_trains(nominal: int, batch: int) -> int:  # train.py's arithmetic, then open_clip's data.py
        per_epoch = nominal // 5
        batches = math.ceil(per_epoch / batch)
        return 5 * math.ceil(batches / 4) * 4 * batch

    small = get_scale("small")
    assert (small.samples_seen, small.batch_size, small.model) == (12_861_440, 4096, "ViT-B-32")
    assert small.samples_seen == datacomp_trains(12_800_000, 4096)
    assert get_scale("medium").samples_seen == datacomp_trains(128_000_000, 4096) == 128_040_960
    assert get_scale("debug").samples_seen == datacomp_trains(128_000, 1024)
    assert (get_scale("large").samples_seen, get_scale("large").model, get_scale("large").batch_size) == \
        (datacomp_trains(1_280_000_000, 8192), "ViT-B-16", 8192)
    xl = get_scale("xlarge")
    assert (xl.samples_seen, xl.model, xl.batch_size, xl.learning_rate, xl.warmup, xl.beta2) == \
        (datacomp_trains(12_800_000_000, 90112), "ViT-L-14", 90112, 1e-3, 10_000, 0.95)
    assert SCALES["tiny"].model == "poolsieve-tiny"
    for scale in SCALES.values():  # every scale's own budget is one the plan honours exactly
        assert plan_budget(scale.samples_seen, scale.batch_size, scale.num_checkpoints).samples_seen == scale.samples_seen
    with pytest.raises(ConfigError, match="unknown scale"):
        get_scale("huge")


@pytest.mark.parametrize("budget,batch,epochs,world,accum", [
    (512, 64, 1, 1, 1), (12_861_440, 4096, 5, 8, 1), (1024, 64, 4, 1, 1), (128, 128, 1, 1, 1),
    (12_861_440, 4096, 5, 8, 2), (1280, 64, 4, 1, 1), (3072, 64, 2, 2, 2)])
def test_plan_budget_honours_a_budget_exactly(budget, batch, epochs, world, accum):
    plan = plan_budget(budget, batch, epochs, world, accum)
    assert plan.samples_seen == budget == plan.epochs * plan.steps_per_epoch * plan.batch_size
    assert plan.batch_size == plan.per_process_batch * world * accum == batch and plan.epochs == epochs


def test_plan_budget_refuses_what_it_cannot_train_exactly_and_names_budgets_that_work():
    """Issue 26: --samples-seen 640 (tiny: 4 checkpoints, batch 64) used to become 1,024 silently."""
    with pytest.raises(ConfigError) as e:
        plan_budget(640, 64, 4)
    assert str(e.value) == ("a budget of 640 samples seen cannot be trained exactly: 4 checkpoint(s) (epochs) of "
                            "whole batches of 64 take a multiple of 256; the nearest budgets that work are 512 or "
                            "768 (--samples-seen), or 640 with --num-checkpoints 1, 2, 5 or 10")
    for suggested in (512, 768):
        assert plan_budget(suggested, 64, 4).samples_seen == suggested
    for checkpoints in (1, 2, 5, 10):
        assert plan_budget(640, 64, checkpoints).samples_seen == 640
    with pytest.raises(ConfigError, match=r"nearest budgets that work are 256 \(--samples-seen\)$"):
        plan_budget(100, 64, 4)  # under one step per checkpoint: only the budget above; not whole batches
    nominal = plan_budget(12_800_000, 4096, 5)  # DataComp's nominal small budget, given: honoured exactly
    assert nominal.samples_seen == 12_800_000 and nominal.steps_per_epoch == 625
    with pytest.raises(ConfigError, match="cannot be trained exactly"):
        TrainConfig(samples_seen=640).recipe()  # refused where the config is read, before any data is
    assert TrainConfig(samples_seen=1280).recipe().samples_seen == 1280


def test_loader_workers_divide_an_epoch_so_open_clip_adds_no_batches():
    from poolsieve.train.budget import fewer_workers_note, loader_workers

    plan = plan_budget(12_861_440, 4096, 5, world_size=8)  # 628 batches per epoch
    assert loader_workers(4, plan, None) == 4 and loader_workers(4, plan, 2) == 2 and loader_workers(0, plan, 8) == 0
    odd = plan_budget(1280, 64, 4)  # 5 batches per epoch: only 1 (or 5) workers split them evenly
    assert loader_workers(4, odd, 16) == 1 and loader_workers(8, odd, None) == 5
    assert fewer_workers_note(1, 4, odd, 16) == (
        "1 data-loader worker(s) per process instead of 4 (16 CPU(s) each; an epoch's 5 batches split evenly over "
        "them); samples seen stay 1,280; 4 workers need a budget that is a multiple of 1,024, e.g. 1,024 or 2,048")
    assert fewer_workers_note(2, 4, plan, 2).endswith("samples seen stay 12,861,440")  # the machine decided


def test_open_clip_flags_follow_datacomp(tmp_path):
    from poolsieve.train.config import open_clip_args
    from poolsieve.train.launch import runner_command

    cfg = TrainConfig(scale="small", gpus=8, precision="amp")
    recipe = cfg.recipe()
    plan = plan_budget(recipe.samples_seen, recipe.batch_size, recipe.num_checkpoints, 8, 1)
    args = open_clip_args(["--train-data", str(tmp_path / "00000000.tar")], tmp_path / "run", recipe, plan, cfg,
                          cfg.workers, "amp")
    flag = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert (flag["--model"], flag["--batch-size"], flag["--epochs"], flag["--lr"], flag["--warmup"]) == \
        ("ViT-B-32", "512", "5", "0.0005", "500")
    assert int(flag["--train-num-samples"]) * 5 == 12_861_440  # what DataComp's launcher trains with 4 workers
    assert flag["--workers"] == "4" and "--save-most-recent" in args
    assert {"--dataset-resampled", "--grad-checkpointing", "--local-loss", "--gather-with-grad"} <= set(args)
    assert runner_command(["--x"], gpus=8)[1:5] == ["-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node=8"]


def test_parse_open_clip_log_line():
    line = ("2026-11-28,08:29:23 | INFO | Train Epoch: 0 [3200/3200 (100%)] Data (t): 0.009 Batch (t): 5.969, "
            "7.96/s, 7.96/s/gpu LR: 0.000005 Logit Scale: 14.191 Contrastive_loss: 2.4772 (2.8541) Loss: 2.4772 (2.8541)")
    rec = parse_train_line(line)
    assert rec == {"epoch": 0, "epoch_samples": 3200, "samples_per_epoch": 3200, "loss": 2.4772,
                   "losses": {"contrastive_loss": 2.4772}}
    assert parse_train_line("INFO | Start epoch 0") is None


def test_shard_listing_and_counts(tmp_path):
    tars = write_wds(tmp_path / "a", 250, seed=1, per_shard=100)
    assert list_shards(tmp_path / "a") == tars
    assert count_samples(tars) == 250
    write_wds(tmp_path / "b", 30, seed=2, stats=False)  # no stats: counted from the tar
    assert count_samples(list_shards(tmp_path / "b")) == 30
    with pytest.raises(InputError, match="does not exist"):
        list_shards(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .tar shards"):
        list_shards(tmp_path / "empty")
    (tmp_path / "a" / "00000001_stats.json").unlink()
    with pytest.raises(InputError, match="00000001.tar: shard has no _stats.json"):
        list_shards(tmp_path / "a")
    (tmp_path / "a" / "00000001_stats.json").write_text('{"successes": 100}')
    (tmp_path / "a" / "00000000_stats.json").write_text("{not json")
    with pytest.raises(InputError, match="00000000_stats.json: not valid JSON"):
        count_samples(tars)
    with pytest.raises(InputError, match="does not exist"):
        list_shards([tmp_path / "a" / "nope.tar"])


@pytest.mark.train
def test_train_cli_two_subsets_see_the_same_budget(tmp_path, capsys):
    """Two subsets of different sizes each see exactly the budget; checkpoints load with load_model."""
    import torch

    from poolsieve.core.models import ModelSpec, load_model
    from poolsieve.pipeline import cli
    from poolsieve.train import cli as train_cli

    ws = tmp_path / "ws"
    write_wds(ws / "filtered" / "small", 150, seed=3, per_shard=100)
    write_wds(ws / "filtered" / "large", 450, seed=4, per_shard=200)
    args = cli.stage_parser("train").parse_args(["-w", str(ws), "--executor", "local", "--subset", "small", "--subset",
                                       "large", "--samples-seen", str(BUDGET), "--batch-size", "32",
                                       "--threads", "1"])
    ctx = cli.make_context(args)
    assert cli.run_stage(train_cli.STAGE, ctx, args) == 0
    out = capsys.readouterr().out
    assert "samples seen" in out and "== train" in out
    # one number everywhere: the table's samples seen and the stage block's budget are the budget given
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["small"], ["large"])]
    assert [r[2] for r in rows] == [str(BUDGET)] * 2, out  # subset, size, samples seen, ...
    assert out.count(f", {BUDGET:,} samples seen, batch 32") == 2, out

    summaries = {name: json.loads((ws / "runs" / name / "summary.json").read_text()) for name in ("small", "large")}
    for name, size in (("small", 150), ("large", 450)):
        s = summaries[name]
        assert s["dataset_size"] == size
        assert s["samples_seen"] == BUDGET == s["budget"]
        assert s["steps"] == BUDGET // 32
        assert s["passes_over_data"] == round(BUDGET / size, 3)
        assert s["checkpoint"] == "checkpoints/epoch_latest.pt"  # relative to the run folder
        assert (ws / "runs" / name / s["checkpoint"]).exists() and (ws / "runs" / name / "info.pkl").exists()
        losses = [r["loss"] for r in s["losses"]]
        assert len(losses) >= 2 and all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0]  # contrastive loss falls from ~ln(64) within 8 steps
        assert (ws / "runs" / name / "params.txt").exists()

    # The checkpoint is open_clip's format, loadable by poolsieve's model loader, and trained.
    from poolsieve.train.run_folder import load_summary

    model, _, _ = load_model(ModelSpec("poolsieve-tiny", load_summary(ws / "runs" / "small")["checkpoint"]))
    fresh, _, _ = load_model(ModelSpec("poolsieve-tiny"))
    trained_w = model.state_dict()["visual.conv1.weight"]
    assert not torch.equal(trained_w, fresh.state_dict()["visual.conv1.weight"])
    torch.set_grad_enabled(True)

    # A rerun skips finished runs; a rerun with another budget must be asked to overwrite.
    assert cli.run_stage(train_cli.STAGE, ctx, args) == 0
    assert "skipped (done)" in capsys.readouterr().out
    other = cli.stage_parser("train").parse_args(["-w", str(ws), "--executor", "local", "--subset", "small",
                                        "--samples-seen", "1024"])
    with pytest.raises(ConfigError, match="runs/small holds a run with other data or settings"):
        cli.run_stage(train_cli.STAGE, cli.make_context(other), other)


@pytest.mark.train
def test_training_is_seeded(tmp_path):
    """Same data and seed give the same weights (open_clip's seed plus the seeded sample shuffle)."""
    import torch

    data = write_wds(tmp_path / "d", 200, seed=5, per_shard=100)
    cfg = TrainConfig(samples_seen=128, batch_size=32, seed=7, log_every_n_steps=1, threads=1, num_checkpoints=1)
    a = train_clip(data, tmp_path / "a", cfg)
    b = train_clip(tmp_path / "d", tmp_path / "b", cfg)
    assert a["samples_seen"] == b["samples_seen"] == 128
    wa = torch.load(a["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    wb = torch.load(b["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in a["losses"]] == [r["loss"] for r in b["losses"]]


def test_train_cli_errors(tmp_path):
    from poolsieve.pipeline import cli
    from poolsieve.train import cli as train_cli

    (tmp_path / "ws").mkdir()
    args = cli.stage_parser("train").parse_args(["-w", str(tmp_path / "ws"), "--executor", "local", "--subset", "nope"])
    with pytest.raises(InputError, match="filtered/nope: training data folder does not exist"):
        cli.run_stage(train_cli.STAGE, cli.make_context(args), args)
    args = cli.stage_parser("train").parse_args(["-w", str(tmp_path / "ws"), "--executor", "local"])
    with pytest.raises(ConfigError, match="--subset"):
        cli.run_stage(train_cli.STAGE, cli.make_context(args), args)
    with pytest.raises(ConfigError, match="must be positive"):
        TrainConfig(samples_seen=-5).recipe()


def test_seed_set_is_a_training_folder(tmp_path):
    from poolsieve.pipeline.demo.seed_set import write_seed_set

    shards = write_seed_set(tmp_path / "seed", 250, seed=11, image_size=32, samples_per_shard=100)
    assert [p.name for p in shards] == ["00000000.tar", "00000001.tar", "00000002.tar"]
    assert list_shards(tmp_path / "seed") == shards and count_samples(shards) == 250
    with tarfile.open(shards[2]) as tar:
        names = tar.getnames()
    assert names[:3] == ["000000020000.jpg", "000000020000.txt", "000000020000.json"] and len(names) == 150
    again = write_seed_set(tmp_path / "again", 250, seed=11, image_size=32, samples_per_shard=100)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(shards, again, strict=True))


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (children, their children, ...) with its command line, from ``/proc``."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    below, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for kid in (k for k, p in parents.items() if p == parent):
            with contextlib.suppress(OSError):
                below[kid] = Path(f"/proc/{kid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            todo.append(kid)
    return below


@pytest.mark.train
def test_killed_train_command_leaves_no_training_process(tmp_path):
    """SIGKILL of ``poolsieve train`` ends open_clip's runner and its data-loader workers (none keeps writing
    the run folder); an overwrite run then trains from scratch."""
    data = write_wds(tmp_path / "d", 100, seed=9)
    ws, out = tmp_path / "ws", tmp_path / "ws" / "runs" / "d"
    command = [sys.executable, "-m", "poolsieve.pipeline.cli", "train", "--workspace", str(ws), "--data",
               str(data[0].parent), "--samples-seen", "4096", "--batch-size", "32", "--threads", "1", "--workers", "2"]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "out.log"
    deadline = time.monotonic() + 240
    while not (log.exists() and "Train Epoch" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    below = _descendants(parent.pid)
    if not log.exists():
        parent.kill()
        pytest.fail("open_clip never started")
    runners = [pid for pid, cmd in below.items() if "poolsieve.train.open_clip_runner" in cmd]
    assert runners, below
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20  # a data-loader worker notices its runner's end within 5 s
    while any(_alive(pid) for pid in below) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = {pid: cmd for pid, cmd in below.items() if _alive(pid)}
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"outlived poolsieve train: {survivors}"
    assert not (out / "summary.json").exists()
    s = train_clip(data, out, TrainConfig(samples_seen=128, batch_size=32, threads=1, num_checkpoints=1),
                   overwrite=True)
    assert s["samples_seen"] == 128
