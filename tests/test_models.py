"""Model specs beyond ARCH:TAG: ``hf-hub:ORG/NAME`` from a hub on 127.0.0.1, ``local-dir:``, ``--model-config``
JSON architectures, and a pretrained tag that cannot be fetched offline (one line, within seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_minisets import MiniHub
from safetensors.torch import load_file

from poolsieve.core.errors import InputError, PoolsieveError
from poolsieve.core.models import ModelSpec, load_model, register_model_config, register_model_configs
from poolsieve.train.checkpoints import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, write_open_clip_folder

# Loads each spec given, saves its weights as N.safetensors and prints its context length; an error prints
# one line "ERROR <seconds> <message>".
LOAD = """
import sys, time
from safetensors.torch import save_file
from poolsieve.core.errors import PoolsieveError
from poolsieve.core.models import ModelSpec, load_model
for i, spec in enumerate(sys.argv[1:]):
    t = time.monotonic()
    try:
        model, preprocess, tokenizer = load_model(ModelSpec.parse(spec))
    except PoolsieveError as e:
        print("ERROR", round(time.monotonic() - t, 1), e)
        continue
    save_file(model.state_dict(), f"{i}.safetensors")
    print(tokenizer(["a photo"]).shape[-1])
"""


def _load_in_fresh_python(cwd: Path, endpoint: str, *specs: str) -> list[str]:
    """huggingface_hub reads HF_ENDPOINT when imported: each hub configuration gets its own process."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(cwd / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", LOAD, *specs], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A poolsieve-tiny model folder as a finished run leaves it (open_clip_config.json + safetensors)."""
    import open_clip

    register_model_configs()
    torch.manual_seed(0)
    state = open_clip.create_model("poolsieve-tiny").state_dict()
    root = tmp_path_factory.mktemp("tiny")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "epoch_1.pt")
    write_open_clip_folder(root, "poolsieve-tiny", root / "epoch_1.pt")
    return root, state


@pytest.mark.subprocess
def test_hf_hub_and_local_dir_specs_load_the_served_weights(tiny_repo, tmp_path):
    """hf-hub:ORG/NAME in both file layouts open_clip looks for, served on 127.0.0.1; then, with the hub
    gone, the cached repo still loads and an uncached pretrained tag fails in one line within seconds."""
    repo, state = tiny_repo
    config = (repo / OPEN_CLIP_CONFIG).read_bytes()
    bin_weights = tmp_path / "w.bin"
    torch.save(state, bin_weights)
    repos = {"poolsieve-test/tiny": {OPEN_CLIP_CONFIG: config, OPEN_CLIP_WEIGHTS: (repo / OPEN_CLIP_WEIGHTS).read_bytes()},
             "poolsieve-test/tiny-bin": {OPEN_CLIP_CONFIG: config,
                                         "open_clip_pytorch_model.bin": bin_weights.read_bytes()}}
    with MiniHub(repos) as hub:
        lines = _load_in_fresh_python(tmp_path, hub.endpoint, "hf-hub:poolsieve-test/tiny",
                                      "hf-hub:poolsieve-test/tiny-bin", "hf-hub:poolsieve-test/missing")
        seen = list(hub.handler.seen)
    assert lines[:2] == ["32", "32"]  # poolsieve-tiny's context length, from the served config
    assert _equal(load_file(tmp_path / "0.safetensors"), state) and _equal(load_file(tmp_path / "1.safetensors"), state)
    assert any("/poolsieve-test/tiny/resolve/" in s and OPEN_CLIP_WEIGHTS in s for s in seen)
    assert lines[2].startswith("ERROR") and "cannot load hf-hub:poolsieve-test/missing" in lines[2]
    assert len(lines) == 3

    for f in ("0.safetensors", "1.safetensors"):
        (tmp_path / f).unlink()
    with MiniHub({}) as closed:
        port = closed.endpoint
    lines = _load_in_fresh_python(tmp_path, port, "hf-hub:poolsieve-test/tiny", "ViT-B-32:openai")
    assert lines[0] == "32" and _equal(load_file(tmp_path / "0.safetensors"), state)  # from the cache
    assert len(lines) == 2 and lines[1].startswith("ERROR")
    _, seconds, message = lines[1].split(" ", 2)
    assert float(seconds) < 15, f"offline failure took {seconds}s"
    assert message.startswith(f"cannot load ViT-B-32:openai: the hub at {port} is unreachable")
    assert "local checkpoint" in message and "quickstart's own scorer" in message

    model, preprocess, tokenizer = load_model(ModelSpec.parse(f"local-dir:{repo}"))
    torch.set_grad_enabled(True)
    assert _equal(model.state_dict(), state) and tokenizer(["x"]).shape[-1] == 32


def test_model_config_json_registers_an_architecture(tmp_path):
    """--model-config FILE.json names an architecture after the file; a checkpoint of it loads by that name."""
    import open_clip

    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 16, "layers": 2, "width": 64, "patch_size": 4},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    path = tmp_path / "cfgs" / "poolsieve-test-mini.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    with pytest.raises(PoolsieveError, match="unknown open_clip architecture 'poolsieve-test-mini'"):
        load_model(ModelSpec.parse("poolsieve-test-mini"))
    assert register_model_config(path) == "poolsieve-test-mini"

    torch.manual_seed(1)
    state = open_clip.create_model("poolsieve-test-mini").state_dict()
    ckpt = tmp_path / "mini.pt"
    torch.save({"epoch": 3, "state_dict": state}, ckpt)
    spec = ModelSpec.parse(f"poolsieve-test-mini:{ckpt}")
    assert (spec.arch, spec.pretrained) == ("poolsieve-test-mini", str(ckpt))
    model, preprocess, tokenizer = load_model(spec)
    torch.set_grad_enabled(True)
    assert _equal(model.state_dict(), state)
    assert model.visual.image_size == (16, 16) and tokenizer(["x"]).shape[-1] == 16

    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps({"embed_dim": 64, "text_cfg": {}}))
    with pytest.raises(InputError, match="broken.json: an open_clip model config needs embed_dim, vision_cfg"):
        register_model_config(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="broken.json: not a readable model config JSON"):
        register_model_config(bad)
    with pytest.raises(InputError, match="missing.json: not a readable"):
        register_model_config(tmp_path / "missing.json")
