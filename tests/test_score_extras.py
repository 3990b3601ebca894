"""Score-stage extras: the shard reader, reference sets, DataComp imports and the device-decode path (run on CPU)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import make_samples, write_img2dataset_shards
from test_score import save_tiny_checkpoint

from poolsieve.core.errors import InputError
from poolsieve.core.formats import read_score_table, score_column
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.stage import ScoreConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------ shard reader
def test_reader_groups_members_by_key_in_tar_order(tmp_path):
    from poolsieve.core.shard_reader import read_shard

    tar = write_img2dataset_shards(tmp_path, make_samples(5, seed=2, fail_every=3), per_shard=5)[0]
    samples = read_shard(tar)
    assert [s.key for s in samples] == ["000000000", "000000001", "000000003", "000000004"]  # 2 failed to download
    assert all(s.image and s.caption and s.uid and len(s.uid) == 32 for s in samples)
    tar.write_bytes(tar.read_bytes()[:3000])
    with pytest.raises(InputError, match="truncated tar") as err:
        read_shard(tar)
    assert err.value.path == tar


# ------------------------------------------------------------------------------- references
def _plain_open_clip(checkpoint: Path):
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms("poolsieve-tiny")
    model.load_state_dict(torch.load(checkpoint)["state_dict"])
    return model.eval(), preprocess


def _plain_image_embedding(model, preprocess, jpeg: bytes) -> np.ndarray:
    import torch
    from PIL import Image

    with torch.no_grad():
        e = model.encode_image(preprocess(Image.open(io.BytesIO(jpeg))).unsqueeze(0))
        return torch.nn.functional.normalize(e, dim=-1)[0].numpy()


def test_reference_folder_and_tars_embed_like_open_clip(tmp_path, checkpoint):
    from poolsieve.pipeline.score.references import embed_reference, read_reference

    samples = make_samples(6, seed=4, image_size=40)
    folder = tmp_path / "ref"
    for i, s in enumerate(samples):
        (folder / s.colour).mkdir(parents=True, exist_ok=True)
        (folder / s.colour / f"{i}.jpg").write_bytes(s.jpeg)
    (folder / samples[0].colour / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    ws = Workspace.create(tmp_path / "ws")
    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"])
    summary = embed_reference(ws, folder, "colours", config, quiet=True)
    assert summary["images"] == 6 and summary["undecodable (left out)"] == 1
    emb, labels = read_reference(ws.reference_path("colours"), "poolsieve_tiny")
    assert emb.dtype == np.float16 and emb.shape == (6, 128)
    with np.load(ws.reference_path("colours")) as z:
        sources = list(z["sources"])
    model, preprocess = _plain_open_clip(checkpoint)
    for e, label, src in zip(emb, labels, sources, strict=True):
        i = int(Path(src).stem)
        assert label == samples[i].colour
        np.testing.assert_allclose(e.astype(np.float32), _plain_image_embedding(model, preprocess, samples[i].jpeg),
                                   atol=2e-3)
    # The same set as a webdataset tar with .cls labels.
    with tarfile.open(tmp_path / "ref.tar", "w") as tar:
        for i, s in enumerate(samples):
            _add(tar, f"{i:04d}.jpg", s.jpeg)
            _add(tar, f"{i:04d}.cls", str(i % 2).encode())
    embed_reference(ws, tmp_path / "ref.tar", "parity", config, quiet=True)
    emb2, labels2 = read_reference(ws.reference_path("parity"), "poolsieve_tiny")
    assert list(labels2) == [str(i % 2) for i in range(6)]
    assert emb2.shape == (6, 128)
    assert embed_reference(ws, folder, "colours", config, quiet=True)["skipped"].startswith("exists")
    # From the command line, with a column key of one's own.
    from poolsieve.pipeline.cli import main

    rc = main(["score", "-w", str(ws.root), "--executor", "local", "-m", f"tiny=poolsieve-tiny:{checkpoint}",
               "--reference", str(folder), "--name", "cli"])
    assert rc == 0
    emb3, labels3 = read_reference(ws.reference_path("cli"), "tiny")
    np.testing.assert_array_equal(emb3, emb)
    assert list(labels3) == list(labels)


def test_model_entries_parse_keys():
    from poolsieve.pipeline.score.model_entries import ModelEntry, parse_models

    assert ModelEntry.parse("ViT-B-32:openai").key == "b32"
    assert ModelEntry.parse("ViT-L-14:openai").key == "l14"
    assert ModelEntry.parse("ViT-B-32").key == "vit_b_32"
    e = ModelEntry.parse("b32=ViT-B-32:/ckpt/b32.pt")
    assert (e.key, e.spec.arch, e.spec.pretrained) == ("b32", "ViT-B-32", "/ckpt/b32.pt")
    assert ModelEntry.parse({"arch": "ViT-B-32", "pretrained": "x.pt", "key": "mine"}).key == "mine"
    from poolsieve.core.errors import ConfigError

    with pytest.raises(ConfigError, match="share the column key"):
        parse_models(["ViT-B-32", "ViT-B-32:/other.pt"])


# --------------------------------------------------------------------------- DataComp import
def test_datacomp_import_keeps_downloaded_rows_aligned(tmp_path, local_runtime):
    from poolsieve.filters.registry import ScoredPool
    from poolsieve.pipeline.score.datacomp_import import import_datacomp

    samples = make_samples(40, seed=5, fail_every=4)  # 10 failed downloads
    ws = Workspace.create(tmp_path / "ws")
    write_img2dataset_shards(ws.shards_dir, samples[:30], per_shard=15)  # the last 10 never downloaded
    rng = np.random.default_rng(0)
    src = tmp_path / "datacomp"
    src.mkdir()
    truth = {}
    for f, chunk in enumerate((samples[:20], samples[20:])):
        n = len(chunk)
        arrays = {}
        for k, d in (("b32", 512), ("l14", 768)):
            for side in ("img", "txt"):
                v = rng.normal(size=(n, d)).astype(np.float32)
                arrays[f"{k}_{side}"] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
        meta = pd.DataFrame({"uid": [s.uid for s in chunk], "url": "http://x", "text": [s.caption for s in chunk],
                             "original_width": 256, "original_height": 256,
                             "clip_b32_similarity_score": rng.random(n).astype(np.float32),
                             "clip_l14_similarity_score": rng.random(n).astype(np.float32),
                             "sha256": "0" * 64})
        meta.to_parquet(src / f"part{f}.parquet", index=False)
        np.savez(src / f"part{f}.npz", **arrays)
        for i, s in enumerate(chunk):
            truth[s.uid] = (arrays["l14_img"][i], meta["clip_b32_similarity_score"][i])
    summary = import_datacomp(ws, src, local_runtime, language=False)
    downloaded = {s.uid for s in samples[:30] if s.jpeg is not None}
    assert summary["rows read"] == 40 and summary["rows kept"] == len(downloaded)
    pool = ScoredPool(ws.score_tables())
    df = pool.read_columns(["key", score_column("b32")])
    assert set(df["uid"]) == downloaded and df["key"].notna().all()
    emb = pool.load_embeddings(["l14_img"])["l14_img"]
    for uid, row, score in zip(df["uid"], emb, df[score_column("b32")], strict=True):
        np.testing.assert_array_equal(row, truth[uid][0])
        assert score == pytest.approx(float(truth[uid][1]))
    table = read_score_table(ws.score_table_path("part0"))
    assert (table["caption_words"] == table["text"].str.split().str.len()).all()
    np.savez(src / "part1.npz", b32_img=np.zeros((3, 512), np.float16))
    with pytest.raises(InputError, match="misaligned") as err:
        import_datacomp(ws, src, local_runtime, overwrite=True, language=False)
    assert err.value.path == src / "part1.npz"


# ---------------------------------------------------------------------- device decode (on CPU)
def test_device_decode_path_matches_pil_closely(tmp_path, checkpoint):
    from PIL import Image

    from poolsieve.core.shard_reader import TarSample
    from poolsieve.pipeline.score.encode import Encoder, decode_on_device
    from poolsieve.pipeline.score.model_entries import ModelEntry
    from poolsieve.pipeline.score.prepare import prepare_chunk

    samples = make_samples(12, seed=6, image_size=48)
    enc = Encoder([ModelEntry.parse(f"poolsieve-tiny:{checkpoint}")], "cpu")
    prep = enc.preps[0]
    assert prep.device_decodable and prep.resize == 32 and prep.crop == (32, 32)
    on_device, failed = decode_on_device([s.jpeg for s in samples], prep, "cpu")
    pil = np.stack([np.asarray(prep.pil_transform(Image.open(io.BytesIO(s.jpeg)))) for s in samples])
    assert not failed and on_device.shape == pil.shape
    assert np.abs(on_device.numpy().astype(int) - pil.astype(int)).mean() < 2.0

    png = io.BytesIO()
    Image.open(io.BytesIO(samples[1].jpeg)).save(png, format="PNG")
    tar_samples = [TarSample(key=f"k{i}", image=s.jpeg, image_ext="jpg", text=s.caption,
                             meta={"uid": s.uid}) for i, s in enumerate(samples)]
    tar_samples[1].image = png.getvalue()  # not a JPEG: decoded on the CPU, merged back in order
    tar_samples[2].image = samples[2].jpeg[:20] + bytes(200)  # a JPEG header with garbage after it
    cpu_plan = enc.plan(language=False)
    gpu_plan = enc.plan(language=False)
    gpu_plan.decode = "gpu"  # the encoder decodes on its device: here the CPU, through the same code
    cpu = enc.encode(prepare_chunk(tar_samples, cpu_plan, "s", 0, 0))
    gpu_chunk = prepare_chunk(tar_samples, gpu_plan, "s", 0, 0)
    assert len(gpu_chunk.jpeg_bytes) >= 10 and 1 not in set(np.flatnonzero(gpu_chunk.ok)[gpu_chunk.jpeg_rows])
    gpu = enc.encode(gpu_chunk)
    assert gpu.columns["status"][2] == cpu.columns["status"][2] == "decode_error"
    ok_cpu = np.asarray(cpu.columns["status"]) == "success"
    assert ok_cpu.sum() == 11
    key = "poolsieve_tiny"
    sc_cpu = cpu.scores[key][ok_cpu[cpu.ok]]
    sc_gpu = gpu.scores[key][ok_cpu[gpu.ok]]
    np.testing.assert_allclose(sc_gpu, sc_cpu, atol=2e-2)
    assert json.dumps(gpu.columns["status"])  # plain, serialisable columns


def test_a_samples_embedding_does_not_depend_on_its_batch(checkpoint):
    """The same samples cut into other chunks (the end of a shard falls elsewhere) get the same bits: every
    forward has the batch's shape (a short batch is padded), so the kernels that round are the same."""
    from poolsieve.core.shard_reader import TarSample
    from poolsieve.pipeline.score.encode import Encoder
    from poolsieve.pipeline.score.model_entries import ModelEntry
    from poolsieve.pipeline.score.prepare import prepare_chunk

    samples = [TarSample(key=f"k{i}", image=s.jpeg, image_ext="jpg", text=s.caption, meta={"uid": s.uid})
               for i, s in enumerate(make_samples(11, seed=9, image_size=40))]
    enc = Encoder([ModelEntry.parse(f"poolsieve-tiny:{checkpoint}")], "cpu", batch_size=4)
    plan = enc.plan(language=False)
    whole = enc.encode(prepare_chunk(samples, plan, "s", 0, 0))
    parts = [enc.encode(prepare_chunk(samples[a:b], plan, "s", i, a)) for i, (a, b) in enumerate([(0, 5), (5, 11)])]
    key = "poolsieve_tiny"
    for out in ("image", "text", "scores"):
        got = np.concatenate([getattr(p, out)[key] for p in parts])
        assert got.tobytes() == getattr(whole, out)[key].tobytes(), out
