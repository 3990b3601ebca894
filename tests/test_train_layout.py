"""Train stage pieces that need no training: shard patterns, checkpoints, info.pkl, SLURM script, bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from test_train import write_wds

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.train.budget import plan_budget
from poolsieve.train.checkpoints import LATEST, atomic_save, prepare_resume, read_epoch, write_info
from poolsieve.train.config import TrainConfig
from poolsieve.train.run_folder import prepare_run
from poolsieve.train.shards import DATA_FILE_FLAG, Source, brace_patterns, expand, train_data_string


def test_brace_patterns_expand_to_the_same_shards_in_order():
    d = Path("/data/sub")
    shards = [d / f"{i:08d}.tar" for i in [0, 1, 2, 3, 7, 8, 10]] + [Path("/o/a.tar"), Path("/o/9.tar"),
                                                                     Path("/o/10.tar"), Path("/o/x0001.tar")]
    patterns = brace_patterns(shards)
    assert patterns[:3] == ["/data/sub/{00000000..00000003}.tar", "/data/sub/{00000007..00000008}.tar",
                            "/data/sub/00000010.tar"]
    assert expand("::".join(patterns)) == [str(p) for p in shards]
    many = [d / f"{i:08d}.tar" for i in range(10_000)]
    data, factors = train_data_string([Source(tuple(many))])
    assert data == "/data/sub/{00000000..00009999}.tar" and factors is None  # one short argument
    with pytest.raises(InputError, match="brace"):
        brace_patterns([Path("/d/{a,b}.tar")])


def test_weights_follow_datacomp_per_shard_factors(tmp_path):
    a, b = Path("/a"), Path("/b")
    data, factors = train_data_string([Source((a / "00.tar", a / "01.tar", a / "05.tar"), 1.0),
                                       Source((b / "0.tar",), 2.0)])
    assert data == "/a/{00..01}.tar::/a/05.tar::/b/0.tar" and factors == "1::1::2"
    with pytest.raises(ConfigError, match="every data folder or to none"):
        train_data_string([Source((a / "0.tar",), 1.0), Source((b / "0.tar",))])


def test_datacomp_samples_seen_at_small_scale():
    """The small scale trains what DataComp's launcher trains (5 x 628 x 4,096), exactly, over 8 GPUs."""
    plan = plan_budget(12_861_440, 4096, 5, world_size=8, accum_freq=1)
    assert plan.samples_seen == 12_861_440 and plan.steps_per_epoch == 628 and plan.per_process_batch == 512
    with pytest.raises(ConfigError, match="cannot be split over 3 process"):
        plan_budget(12_861_440, 4096, 5, world_size=3)


def test_long_gapped_shard_lists_go_through_a_file(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    one = write_wds(tmp_path / "one", 2, seed=1)[0]
    for i in range(0, 6000, 2):  # 3,000 shards, no two consecutive: 3,000 patterns
        (data / f"{i:08d}.tar").hardlink_to(one)
        (data / f"{i:08d}_stats.json").write_text('{"successes": 2}')
    setup = prepare_run(data, tmp_path / "run", TrainConfig(samples_seen=128, batch_size=32), world_size=1, cpus=2,
                        gpu=False)
    assert max(len(a) for a in setup.argv) < 10_000 and DATA_FILE_FLAG in setup.argv
    from poolsieve.train.open_clip_runner import expand_data_file

    argv = expand_data_file(setup.argv)
    assert expand(argv[argv.index("--train-data") + 1]) == [str(data / f"{i:08d}.tar") for i in range(0, 6000, 2)]


def test_checkpoints_are_written_whole_and_a_truncated_latest_is_replaced(tmp_path):
    ck = tmp_path / "checkpoints"
    for n in (1, 2):
        atomic_save({"epoch": n, "state_dict": {"w": torch.full((4,), float(n))}}, str(ck / f"epoch_{n}.pt"))
    assert [p.name for p in ck.iterdir()] and not list(ck.glob(".*"))  # no temporary left behind
    atomic_save({"epoch": 2, "state_dict": {"w": torch.zeros(4)}}, ck / LATEST)
    whole = (ck / LATEST).read_bytes()
    (ck / LATEST).write_bytes(whole[: len(whole) // 2])  # a kill during an in-place write
    assert read_epoch(ck / LATEST) is None
    epoch, note = prepare_resume(ck)
    assert epoch == 2 and read_epoch(ck / LATEST) == 2
    assert "truncated or unreadable" in note and "epoch_2.pt" in note and "\n" not in note
    assert (ck / (LATEST + ".unreadable")).exists()  # kept, not deleted
    (ck / LATEST).unlink()  # killed between epoch_N.pt and epoch_latest.pt: the newer one is used
    assert prepare_resume(ck) == (2, None) and read_epoch(ck / LATEST) == 2


def test_a_checkpoint_with_code_in_its_pickle_is_not_run(tmp_path):
    """Checkpoints are read weights-only: a payload that would run a command is refused."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    ck = tmp_path / "checkpoints"
    ck.mkdir()
    torch.save({"epoch": 3, "x": Payload()}, ck / LATEST)
    epoch, note = prepare_resume(ck)
    assert not marker.exists() and epoch == 0 and "starts over" in note


def test_info_pkl_holds_what_datacomp_evaluate_reads(tmp_path):
    run = tmp_path / "runs" / "clip30"
    (run / "checkpoints").mkdir(parents=True)
    path = write_info(run, "small", {"model": "ViT-B-32", "batch_size": 4096}, str(tmp_path / "filtered/clip30"))
    info = pickle.loads(path.read_bytes())
    assert info["scale"] == "small" and info["scale_config"]["model"] == "ViT-B-32"
    assert Path(info["checkpoint"]) == run.resolve() / "checkpoints" / "epoch_latest.pt"


def test_slurm_script_trains_on_every_node(tmp_path):
    from poolsieve.train.launch import slurm_script

    write_wds(tmp_path / "d", 40, seed=2, per_shard=1)
    cfg = TrainConfig(scale="small", gpus=8, nodes=4)
    setup = prepare_run(tmp_path / "d", tmp_path / "runs" / "x", cfg, world_size=32, cpus=None, gpu=True)
    text = slurm_script(setup, cfg, partition="gpu")
    assert text.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --requeue", "#SBATCH --partition=gpu"):
        assert line in text.splitlines()
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    assert "-m poolsieve.train.open_clip_runner" in srun and "--batch-size 128" in srun  # 4096 / 32
    assert "--workers 4" in srun and "--precision amp" in srun and "{00000000..00000039}.tar" in srun
    assert "MASTER_ADDR" in text and text.strip().splitlines()[-1].endswith(f"finish {setup.out_dir}")
    xl = TrainConfig(scale="xlarge", gpus=8, nodes=4)
    setup = prepare_run(tmp_path / "d", tmp_path / "runs" / "xl", xl, world_size=32, cpus=None, gpu=True)
    assert "--precision amp_bf16" in slurm_script(setup, xl)  # DataComp's launcher at xlarge


def _cli(argv, capsys):
    from poolsieve.pipeline import cli

    rc = cli.main(argv)
    return rc, capsys.readouterr().err.strip()


def test_bad_train_input_is_one_line(tmp_path, capsys):
    ws = tmp_path / "ws"
    (ws / "filtered" / "empty").mkdir(parents=True)
    write_wds(ws / "filtered" / "ok", 20, seed=3, per_shard=2)
    (tmp_path / "huge.yaml").write_text(json.dumps({"train": {"scale": "huge"}}))
    common = ["-w", str(ws), "--executor", "local"]
    cases = [
        (["--subset", "nope"], "filtered/nope: training data folder does not exist"),
        (["--subset", "empty"], "filtered/empty: no .tar shards"),
        (["--subset", "ok", "--gpus", "64"], "--gpus 64: this machine has"),
        (["--subset", "ok", "--gpus", "3", "--batch-size", "64", "--slurm-script", str(tmp_path / "j.sh")],
         "cannot be split over 3 process"),
        (["--subset", "ok", "-c", str(tmp_path / "huge.yaml")], "unknown scale 'huge'"),
        (["--subset", "ok", "--samples-seen", "640"], "a budget of 640 samples seen cannot be trained exactly"),
    ]
    for extra, message in cases:
        rc, err = _cli(["train", *common, *extra], capsys)
        assert rc == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
    assert not (ws / "runs" / "ok").exists() or not (ws / "runs" / "ok" / "summary.json").exists()


def test_run_refuses_a_budget_before_any_stage_runs(tmp_path, capsys):
    """``poolsieve run`` with a train budget it cannot honour stops in one line before downloading."""
    ws = tmp_path / "ws"
    config = tmp_path / "experiment.yaml"
    config.write_text("download: {processes: 1}\ntrain: {scale: tiny, samples_seen: 640}\n")
    rc, err = _cli(["run", "-w", str(ws), "--executor", "local", "-c", str(config)], capsys)
    assert rc == 2 and "a budget of 640 samples seen cannot be trained exactly" in err and len(err.splitlines()) == 1
    assert not (ws / "shards").exists()
