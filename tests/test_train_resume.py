"""Training runs at the edges: 10,000 shards, a SIGKILL mid-run resumed bit for bit, a truncated checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from test_train import write_wds

from poolsieve.core.errors import PoolsieveWarning
from poolsieve.train.checkpoints import LATEST, read_epoch
from poolsieve.train.config import TrainConfig
from poolsieve.train.run_folder import load_summary
from poolsieve.train.trainer import train_clip

# 4 epochs x 4 steps of 32: every epoch ends in a checkpoint
RESUME = dict(samples_seen=512, batch_size=32, num_checkpoints=4, seed=3, threads=1, log_every_n_steps=1)


@pytest.mark.train
def test_ten_thousand_shards_train(tmp_path):
    data = tmp_path / "many"
    data.mkdir()
    one = write_wds(tmp_path / "one", 2, seed=1)[0]
    for i in range(0, 20_000, 2):  # 10,000 shards with gaps: no brace pattern covers two of them
        (data / f"{i:08d}.tar").hardlink_to(one)
        (data / f"{i:08d}_stats.json").write_text('{"successes": 2}')
    s = train_clip(data, tmp_path / "run", TrainConfig(samples_seen=128, batch_size=32, num_checkpoints=1,
                                                       threads=1, workers=1))
    assert s["shards"] == 10_000 and s["dataset_size"] == 20_000 and s["samples_seen"] == 128
    assert Path(s["checkpoint"]).exists()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / LATEST, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.train
def test_killed_run_resumes_bit_for_bit(tmp_path):
    """SIGKILL during epoch 3 (of 4), truncate the latest checkpoint, resume: the same weights as one run."""
    data = write_wds(tmp_path / "d", 300, seed=6, per_shard=50)[0].parent
    whole = train_clip(data, tmp_path / "whole", TrainConfig(**RESUME))
    assert whole["samples_seen"] == 512

    run = tmp_path / "killed"
    code = ("from poolsieve.train.config import TrainConfig\nfrom poolsieve.train.trainer import train_clip\n"
            f"train_clip({str(data)!r}, {str(run)!r}, TrainConfig(**{RESUME!r}))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL, start_new_session=True)
    log = run / "out.log"
    deadline = time.monotonic() + 400
    try:
        while not (log.exists() and "Train Epoch: 2 [" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_epoch(run / "checkpoints" / LATEST) == 2 and not (run / "summary.json").exists()
    latest = run / "checkpoints" / LATEST
    latest.write_bytes(latest.read_bytes()[:1000])  # as an in-place write killed half-way would leave it

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train_clip(data, run, TrainConfig(**RESUME))
    notes = [str(w.message) for w in caught if issubclass(w.category, PoolsieveWarning)
             and "unreadable" in str(w.message)]
    assert len(notes) == 1 and "resuming from the previous whole one, epoch_2.pt" in notes[0]
    assert resumed["samples_seen"] == 512 and resumed["steps"] == 16
    a, b = _weights(tmp_path / "whole"), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # DataComp's evaluate.py loads info.pkl's model with open_clip from checkpoints/epoch_latest.pt
    import open_clip

    from poolsieve.core.models import register_model_configs

    register_model_configs()
    model = open_clip.create_model("poolsieve-tiny", pretrained=load_summary(run)["checkpoint"])
    assert torch.equal(model.state_dict()["visual.conv1.weight"], a["visual.conv1.weight"])
    assert_plain_open_clip_loads(run)


PLAIN_OPEN_CLIP = """
import sys
import open_clip
from safetensors.torch import save_file
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{run}")
tokenizer = open_clip.get_tokenizer("local-dir:{run}")
assert not [m for m in sys.modules if m.startswith("poolsieve")], "poolsieve was imported"
assert "poolsieve-tiny" not in open_clip.list_models()
save_file(model.state_dict(), "plain.safetensors")
print(preprocess.transforms[1].size, tokenizer(["a photo"]).shape[-1])
# what DataComp's evaluate.py does with info.pkl (eval_utils/wds_eval.py create_model)
import pickle
info = pickle.load(open("{run}/info.pkl", "rb"))
datacomp, _, _ = open_clip.create_model_and_transforms(info["scale_config"]["model"], pretrained=str(info["checkpoint"]))
assert all((a == b).all() for a, b in zip(datacomp.state_dict().values(), model.state_dict().values(), strict=True))
print(info["scale_config"]["model"])
"""


def assert_plain_open_clip_loads(run: Path) -> None:
    """The README's one line loads the run in a fresh python that never imports poolsieve, with the
    weights, input size and context length of poolsieve's own load of ``epoch_latest.pt``; so does
    DataComp's evaluate.py's call on ``info.pkl`` (poolsieve-tiny is named there as the run folder)."""
    from safetensors.torch import load_file

    from poolsieve.core.models import ModelSpec, load_model

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", PLAIN_OPEN_CLIP.format(run=run.name)], cwd=run.parent, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(32,", "32)", "32", f"local-dir:{run.resolve()}"]  # 32 px input; 32 tokens
    plain = load_file(run.parent / "plain.safetensors")
    ours = load_model(ModelSpec("poolsieve-tiny", str(run / "checkpoints" / LATEST)))[0].state_dict()
    torch.set_grad_enabled(True)
    assert plain.keys() == ours.keys() and all(torch.equal(plain[k], ours[k]) for k in ours)


@pytest.mark.train
def test_unloadable_checkpoint_ends_in_one_line(tmp_path):
    """A checkpoint that reads but does not fit the model stops the run with one line, not a traceback."""
    from poolsieve.core.errors import PoolsieveError

    data = write_wds(tmp_path / "d", 100, seed=7)[0].parent
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    torch.save({"epoch": 1, "state_dict": {"nope": torch.zeros(1)}, "optimizer": {}}, ck / LATEST)
    with pytest.raises(PoolsieveError) as e:
        train_clip(data, tmp_path / "run", TrainConfig(samples_seen=128, batch_size=32, threads=1, workers=0))
    assert len(str(e.value).splitlines()) == 1 and "failed" in str(e.value)
