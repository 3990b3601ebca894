"""The score stage: stored scores are the cosines of stored embeddings and match plain open_clip; rows align
with the tar; undecodable images are failed rows; a killed run resumes to identical files; bad input names
the shard."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.errors import InputError
from poolsieve.core.formats import embedding_keys, read_embeddings, read_score_table, score_column
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

# Runtime(address=None) calls ray.init() without an address, which joins any Ray already running on this
# machine (another test session's) and then fails on num_cpus. "local" makes it start its own, as documented.

KEY = "poolsieve_tiny"
NUM_SHARDS, PER_SHARD = 6, 30
BROKEN = {7, 44}  # sample indices whose JPEG is cut in half (undecodable)


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    import open_clip
    import torch

    from poolsieve.core.models import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("poolsieve-tiny")
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def make_pool(root: Path) -> Workspace:
    samples = make_samples(NUM_SHARDS * PER_SHARD, seed=3, image_size=48)
    for i in BROKEN:
        samples[i].jpeg = samples[i].jpeg[: len(samples[i].jpeg) // 2]
    ws = Workspace.create(root)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=PER_SHARD)
    return ws


def tar_samples(tar_path: Path) -> list[tuple[str, bytes, str]]:
    """(key, image bytes, caption) in tar order, read with plain tarfile."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return [(k, v["jpg"], v["txt"].decode()) for k, v in out.items()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, checkpoint, ray_runtime) -> Workspace:
    ws = make_pool(tmp_path_factory.mktemp("pool"))
    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=16)
    summary = score_pool(ws, config, ray_runtime, quiet=True)
    assert summary["scored now"] == NUM_SHARDS and summary["decode errors"] == len(BROKEN)
    return ws


def test_scores_match_plain_open_clip_and_rows_align(scored, checkpoint):
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms("poolsieve-tiny")
    model.load_state_dict(torch.load(checkpoint)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer("poolsieve-tiny")
    img_key, txt_key = embedding_keys(KEY)
    seen_broken = 0
    for tar in scored.shard_tars():
        df = read_score_table(scored.score_table_path(tar.stem))
        emb = read_embeddings(scored.embeddings_path(tar.stem), [img_key, txt_key], n_rows=len(df))
        truth = tar_samples(tar)
        assert list(df["key"]) == [k for k, _, _ in truth]  # one row per tar sample (this tar is in key order)
        assert list(df["sha256"]) == [hashlib.sha256(b).hexdigest() for _, b, _ in truth]
        assert emb[img_key].dtype == np.float16
        ok = (df["status"] == "success").to_numpy()
        seen_broken += int((~ok).sum())
        # Failed rows: NaN score, zero embeddings, the decoder's error text.
        assert df.loc[~ok, score_column(KEY)].isna().all()
        assert not emb[img_key][~ok].any() and not emb[txt_key][~ok].any()
        assert df.loc[~ok, "error"].str.contains("truncated").all()
        # Stored score == cosine of the stored (L2-normalised) embeddings.
        img = emb[img_key][ok].astype(np.float32)
        txt = emb[txt_key][ok].astype(np.float32)
        np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=2e-3)
        np.testing.assert_allclose((img * txt).sum(1), df.loc[ok, score_column(KEY)], atol=1e-3)
        # ... and equals a plain open_clip computation of the same pair (which also checks row alignment).
        pairs = [(b, c) for (_, b, c), good in zip(truth, ok, strict=True) if good]
        with torch.no_grad():
            pixels = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b, _ in pairs])
            ie = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
            te = torch.nn.functional.normalize(model.encode_text(tokenizer([c for _, c in pairs])), dim=-1)
        np.testing.assert_allclose(df.loc[ok, score_column(KEY)], (ie * te).sum(-1).numpy(), atol=1e-3)
        np.testing.assert_allclose(img, ie.numpy(), atol=2e-3)
        assert set(df.loc[ok, "language"]) == {"en"}
        assert (df["caption_words"] == df["text"].str.split().str.len()).all()
    assert seen_broken == len(BROKEN)


def snapshot(ws: Workspace) -> dict[str, tuple[pd.DataFrame, dict[str, np.ndarray]]]:
    out = {}
    for p in sorted(ws.scores_dir.glob("*.parquet")):
        with np.load(p.with_suffix(".npz")) as z:
            out[p.stem] = (pd.read_parquet(p), {k: z[k] for k in z.files})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for shard in a:
        pd.testing.assert_frame_equal(a[shard][0], b[shard][0])
        assert sorted(a[shard][1]) == sorted(b[shard][1])
        for k in a[shard][1]:
            np.testing.assert_array_equal(a[shard][1][k], b[shard][1][k])


def test_killed_run_resumes_only_missing_shards(scored, checkpoint, tmp_path, local_runtime):
    ws = Workspace.create(tmp_path / "ws")
    shutil.copytree(scored.shards_dir, ws.shards_dir)
    cmd = [sys.executable, "-m", "poolsieve.pipeline.cli", "score", "-w", str(ws.root), "--executor", "local",
           "--model", f"poolsieve-tiny:{checkpoint}", "--chunk-size", "16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(ws.scores_dir.glob("*.parquet")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the stage ended before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done_before = {p.stem: p.stat().st_mtime_ns for p in ws.scores_dir.glob("*.parquet")}
    assert 1 <= len(done_before) < NUM_SHARDS
    for stem in done_before:
        assert ws.embeddings_path(stem).exists()
    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=16)
    summary = score_pool(ws, config, local_runtime, quiet=True)
    assert summary["already scored (skipped)"] == len(done_before)
    assert summary["scored now"] == NUM_SHARDS - len(done_before)
    assert {p.stem: p.stat().st_mtime_ns for p in ws.scores_dir.glob("*.parquet") if p.stem in done_before} == done_before
    assert_same(snapshot(ws), snapshot(scored))  # same files as one uninterrupted run (there: on Ray)


def test_truncated_tar_names_the_shard_and_others_are_scored(scored, checkpoint, tmp_path, local_runtime):
    ws = Workspace.create(tmp_path / "ws")
    shutil.copytree(scored.shards_dir, ws.shards_dir)
    bad = ws.shards_dir / "00002.tar"
    data = bad.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.6)])
    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=16, language=False)
    with pytest.raises(InputError) as err:
        score_pool(ws, config, local_runtime, quiet=True)
    assert err.value.path == bad and "truncated tar" in str(err.value)
    assert sorted(p.stem for p in ws.scores_dir.glob("*.parquet")) == ["00000", "00001", "00003", "00004", "00005"]
    assert not ws.score_table_path("00002").exists()


def test_truncated_tar_on_ray_names_the_shard(scored, checkpoint, tmp_path, ray_runtime):
    ws = Workspace.create(tmp_path / "ws")
    shutil.copytree(scored.shards_dir, ws.shards_dir)
    bad = ws.shards_dir / "00001.tar"
    bad.write_bytes(bad.read_bytes()[:5000])
    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=16, language=False,
                         shards=["00000", "00001"])
    with pytest.raises(InputError) as err:
        score_pool(ws, config, ray_runtime, quiet=True)
    assert err.value.path == bad
    assert ws.score_table_path("00000").exists() and not ws.score_table_path("00001").exists()


def test_checkpoint_that_does_not_fit_is_a_one_line_error(scored, tmp_path, capsys, ray_runtime):
    import torch

    from poolsieve.pipeline.cli import main

    good = torch.load(save_tiny_checkpoint(tmp_path / "t.pt"))["state_dict"]
    good["visual.proj"] = torch.zeros(7, 7)
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": good}, wrong)
    ws = tmp_path / "ws"
    shutil.copytree(scored.shards_dir, ws / "shards")
    rc = main(["score", "-w", str(ws), "--executor", "local", "--model", f"poolsieve-tiny:{wrong}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert str(wrong) in err[-1] and "does not fit" in err[-1] and "visual.proj" in err[-1]
    with pytest.raises(InputError, match="does not fit") as on_ray:  # loaded in a Ray actor: the same error
        score_pool(Workspace.open(ws), ScoreConfig(models=[f"poolsieve-tiny:{wrong}"]), ray_runtime, quiet=True)
    assert on_ray.value.path == wrong


def test_sample_without_uid_names_the_shard(tmp_path, checkpoint, local_runtime):
    ws = Workspace.create(tmp_path / "ws")
    tar = write_img2dataset_shards(ws.shards_dir, make_samples(4, seed=1), per_shard=4)[0]
    rewritten = tmp_path / "x.tar"
    with tarfile.open(tar) as src, tarfile.open(rewritten, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".json"):
                data = data.replace(b'"uid"', b'"not_uid"')
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    os.replace(rewritten, tar)
    with pytest.raises(InputError, match="has no uid") as err:
        score_pool(ws, ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"]), local_runtime, quiet=True)
    assert err.value.path == tar
