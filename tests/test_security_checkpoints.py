"""Issue 13, finding 1: a checkpoint must not run code. Pickle payloads are refused in one line naming the
file (nothing runs) unless the user passes ``--trust-checkpoint``; real open_clip checkpoints still load.

The payload is an object whose ``__reduce__`` creates a marker file in ``tmp_path``: the marker appearing
is the proof that unpickling ran code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.errors import InputError
from poolsieve.core.models import ModelSpec, load_model, register_model_configs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import cli

ARCH = "poolsieve-tiny"


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_model(seed: int = 0):
    import open_clip

    register_model_configs()
    torch.manual_seed(seed)
    return open_clip.create_model(ARCH)


def training_checkpoint(seed: int = 0) -> dict:
    """What open_clip's trainer saves (``open_clip_train/main.py``): after one real optimiser step."""
    model = tiny_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = sum(p.float().pow(2).sum() for p in model.parameters())
    loss.backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu")
    return {"epoch": 1, "name": "tiny-run", "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict()}


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


def one_line_refusal(error: pytest.ExceptionInfo, path: Path) -> None:
    text = str(error.value)
    assert "\n" not in text and str(path) in text and "--trust-checkpoint" in text, text
    assert "needs unpickling arbitrary objects" in text


def test_payload_alone_is_refused_and_never_runs(tmp_path, marker):
    path = tmp_path / "evil.pt"
    torch.save(Payload(marker), path)
    with pytest.raises(InputError) as err:
        load_model(ModelSpec(ARCH, str(path)))
    one_line_refusal(err, path)
    assert not marker.exists()


def test_real_weights_plus_payload_are_refused_and_trust_loads_them(tmp_path, marker):
    ckpt = training_checkpoint(seed=1)
    ckpt["payload"] = Payload(marker)
    path = tmp_path / "epoch_1.pt"
    torch.save(ckpt, path)
    with pytest.raises(InputError) as err:
        load_model(ModelSpec(ARCH, str(path)))
    one_line_refusal(err, path)
    assert not marker.exists()

    model, _, _ = load_model(ModelSpec(ARCH, str(path), trust_checkpoint=True))  # the user's explicit choice
    assert marker.exists()  # full unpickling is what trust means: the payload ran
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k]), k


def test_open_clip_training_checkpoint_loads_weights_only(tmp_path, marker):
    ckpt = training_checkpoint(seed=2)
    path = tmp_path / "epoch_latest.pt"
    torch.save(ckpt, path)
    model, _, _ = load_model(ModelSpec(ARCH, str(path)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k]), k
    # DistributedDataParallel's "module." prefix, as open_clip strips it
    ddp = tmp_path / "ddp.pt"
    torch.save({**ckpt, "state_dict": {f"module.{k}": v for k, v in ckpt["state_dict"].items()}}, ddp)
    model, _, _ = load_model(ModelSpec(ARCH, str(ddp)))
    assert torch.equal(model.logit_scale, ckpt["state_dict"]["logit_scale"])


def test_safetensors_checkpoint_loads(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_model(seed=3).state_dict().items()}
    path = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(path))
    model, _, _ = load_model(ModelSpec(ARCH, str(path)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_garbage_and_wrong_content_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(InputError, match="not a readable") as err:
        load_model(ModelSpec(ARCH, str(junk)))
    assert "\n" not in str(err.value) and "--trust-checkpoint" not in str(err.value)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(InputError, match="holds no state_dict"):
        load_model(ModelSpec(ARCH, str(tensor)))


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_score_cli_refuses_the_payload_and_trusts_on_request(tmp_path, marker, capsys):
    ws = Workspace.create(tmp_path / "ws")
    write_img2dataset_shards(ws.shards_dir, make_samples(6, seed=4), per_shard=6)
    ckpt = training_checkpoint(seed=5)
    ckpt["payload"] = Payload(marker)
    evil = tmp_path / "scorer.pt"
    torch.save(ckpt, evil)
    common = ["-w", str(ws.root), "--executor", "local", "--model", f"tiny={ARCH}:{evil}", "--no-language",
              "--threads", "1"]

    code, err = run_cli(["score", *common], capsys)
    assert code == 2 and len(err) == 1 and str(evil) in err[0] and "--trust-checkpoint" in err[0], err
    assert not marker.exists() and not list(ws.scores_dir.glob("*.parquet"))

    code, err = run_cli(["score", *common, "--trust-checkpoint"], capsys)
    assert code == 0 and marker.exists()
    import pyarrow.parquet as pq

    table = pq.read_table(ws.score_table_path("00000"))
    assert table.num_rows == 6 and np.isfinite(table["clip_tiny_similarity_score"].to_numpy()).all()


def test_evaluate_cli_refuses_the_payload_and_trusts_on_request(tmp_path, marker, capsys):
    ckpt = training_checkpoint(seed=6)
    ckpt["payload"] = Payload(marker)
    evil = tmp_path / "epoch_1.pt"
    torch.save(ckpt, evil)
    out = tmp_path / "evals" / "tiny"
    common = ["-w", str(tmp_path / "ws"), "--executor", "local", "--model", f"{ARCH}:{evil}", "--output", str(out),
              "--tasks", "synthetic_colour", "--synthetic-samples", "12", "--batch-size", "12", "--device", "cpu"]

    code, err = run_cli(["evaluate", *common], capsys)
    assert code == 2 and len(err) == 1 and str(evil) in err[0] and "--trust-checkpoint" in err[0], err
    assert not marker.exists()

    code, _ = run_cli(["evaluate", *common, "--trust-checkpoint"], capsys)
    assert code == 0 and marker.exists()
    assert any(out.glob("*.jsonl"))
