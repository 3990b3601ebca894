"""Which models a score run scores: a model added to a scored pool is scored on every shard (and only it);
every model spec is checked before any work, in one line and at once; any CPU count runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.errors import PoolsieveWarning
from poolsieve.core.formats import embedding_keys, read_score_table, score_column
from poolsieve.core.stall import StallWatch
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.cli import main
from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

NUM_SHARDS, PER_SHARD = 3, 10


def save_checkpoint(path: Path, seed: int) -> Path:
    import open_clip
    import torch

    from poolsieve.core.models import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    torch.save({"state_dict": open_clip.create_model("poolsieve-tiny").state_dict()}, path)
    return path


def make_pool(root: Path) -> Workspace:
    ws = Workspace.create(root)
    samples = make_samples(NUM_SHARDS * PER_SHARD, seed=5, image_size=40)
    samples[4].jpeg = samples[4].jpeg[:-60]  # one undecodable image: a failed row in every model's columns
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=PER_SHARD)
    return ws


def config(*models: str) -> ScoreConfig:
    return ScoreConfig(models=list(models), chunk_size=8, threads=1)


def tables(ws: Workspace) -> dict[str, tuple[pd.DataFrame, dict[str, np.ndarray]]]:
    out = {}
    for tar in ws.shard_tars():
        with np.load(ws.embeddings_path(tar.stem)) as z:
            out[tar.stem] = read_score_table(ws.score_table_path(tar.stem)), {k: z[k] for k in z.files}
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str, str]:
    root = tmp_path_factory.mktemp("ckpt")
    return tuple(f"{k}=poolsieve-tiny:{save_checkpoint(root / f'{k}.pt', seed)}" for seed, k in enumerate("abc"))


@pytest.fixture(scope="module")
def scored_a(tmp_path_factory, models) -> Workspace:
    ws = make_pool(tmp_path_factory.mktemp("pool"))
    from poolsieve.core.runtime import Runtime

    assert score_pool(ws, config(models[0]), Runtime(executor="local"), quiet=True)["scored now"] == NUM_SHARDS
    return ws


def test_adding_a_model_scores_it_on_every_shard_and_keeps_the_rest(scored_a, models, tmp_path, local_runtime):
    a, b, c = models
    ws = Workspace.create(tmp_path / "ws")
    shutil.copytree(scored_a.scores_dir, ws.scores_dir, dirs_exist_ok=True)
    shutil.copytree(scored_a.shards_dir, ws.shards_dir, dirs_exist_ok=True)
    before = tables(ws)
    summary = score_pool(ws, config(a, b), local_runtime, quiet=True)
    assert (summary["scored now"], summary["already scored (skipped)"]) == (0, 0)
    assert summary["models added to scored shards"] == f"b ({NUM_SHARDS} shard(s))"
    after = tables(ws)
    for shard, (df, emb) in after.items():
        old_df, old_emb = before[shard]
        assert list(df.columns) == [*old_df.columns, score_column("b")]
        pd.testing.assert_frame_equal(df[old_df.columns], old_df)  # a's columns and the rest as they were
        assert sorted(emb) == ["a_img", "a_txt", "b_img", "b_txt"]
        for key in old_emb:
            assert np.array_equal(emb[key], old_emb[key])
        ok = (df["status"] == "success").to_numpy()
        assert df[score_column("b")][ok].notna().all() and df[score_column("b")][~ok].isna().all()
        assert not np.array_equal(emb["b_img"], emb["a_img"])  # another model's embeddings

    # The same files as scoring a and b at once.
    fresh = Workspace.create(tmp_path / "fresh")
    shutil.copytree(ws.shards_dir, fresh.shards_dir, dirs_exist_ok=True)
    score_pool(fresh, config(a, b), local_runtime, quiet=True)
    for shard, (df, emb) in tables(fresh).items():
        pd.testing.assert_frame_equal(after[shard][0], df)
        assert sorted(after[shard][1]) == sorted(emb)
        for key in emb:
            np.testing.assert_array_equal(after[shard][1][key], emb[key])

    # Nothing left to do: skipped; a model named alone that the tables hold: skipped too.
    assert score_pool(ws, config(a, b), local_runtime, quiet=True)["already scored (skipped)"] == NUM_SHARDS
    assert score_pool(ws, config(b), local_runtime, quiet=True)["already scored (skipped)"] == NUM_SHARDS
    # A third model alone is added after the two, which stay.
    score_pool(ws, config(c), local_runtime, quiet=True)
    for shard, (df, emb) in tables(ws).items():
        assert list(df.columns)[-3:] == [score_column(k) for k in "abc"]
        pd.testing.assert_frame_equal(df.drop(columns=[score_column("c")]), after[shard][0])
        assert set(embedding_keys("c")) <= set(emb)
    # Each table records which model made each key; another model named with a taken key is not silently skipped.
    records = json.loads(pq.read_schema(ws.score_table_path("00000")).metadata[b"poolsieve.models"])
    assert records == {k: m.split("=", 1)[1] for k, m in zip("abc", models, strict=True)}
    with pytest.warns(PoolsieveWarning, match=rf"clip_a_similarity_score of {NUM_SHARDS} shard\(s\) was made by "
                                              r"poolsieve-tiny:\S+/a\.pt, not by poolsieve-tiny:\S+/c\.pt"):
        summary = score_pool(ws, config("a=" + c.split("=", 1)[1]), local_runtime, quiet=True)
    assert summary["already scored (skipped)"] == NUM_SHARDS


def test_a_new_shard_gets_a_table_while_scored_ones_get_the_missing_model(scored_a, models, tmp_path, local_runtime):
    a, b, _ = models
    ws = Workspace.create(tmp_path / "ws")
    shutil.copytree(scored_a.shards_dir, ws.shards_dir, dirs_exist_ok=True)
    shutil.copytree(scored_a.scores_dir, ws.scores_dir, dirs_exist_ok=True)
    for f in (ws.score_table_path("00001"), ws.embeddings_path("00001")):
        f.unlink()
    summary = score_pool(ws, config(a, b), local_runtime, quiet=True)
    assert summary["scored now"] == 1 and summary["models added to scored shards"] == f"b ({NUM_SHARDS - 1} shard(s))"
    for df, _ in tables(ws).values():
        assert {score_column("a"), score_column("b")} <= set(df.columns)


@pytest.mark.parametrize("spec, message", [
    ("ViT-B-33:openai", "unknown open_clip architecture 'ViT-B-33' (did you mean ViT-B-32"),
    ("ViT-B-32:not_a_tag", "'not_a_tag' is neither a pretrained tag of ViT-B-32 nor an existing checkpoint"),
    ("poolsieve-tiny:/nonexistent/scorer.pt", "/nonexistent/scorer.pt: checkpoint file does not exist"),
    ("x=ViT-B-32:openai", "cannot load ViT-B-32:openai: HF_HUB_OFFLINE is set and its weights are not in the "
                          "local cache; pass a local checkpoint"),
])
def test_a_spec_that_cannot_load_fails_at_once_in_one_line(spec, message, scored_a, models, tmp_path, capsys,
                                                            monkeypatch):
    """On a scored pool (which used to skip with exit 0) and on a new one, before anything is read."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # huggingface_hub's own offline switch: no network here
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    fresh = make_pool(tmp_path / "fresh")
    for ws in (scored_a.root, fresh.root):
        t = time.monotonic()
        rc = main(["score", "-w", str(ws), "--executor", "local", "-m", models[0], "-m", spec])
        seconds = time.monotonic() - t
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith("poolsieve score: error: ") and message in err[0]
        assert seconds < 20, f"{spec}: took {seconds:.0f}s to fail"
        if "cannot load" in message:
            assert "poolsieve train-scorer" in err[0]  # what to do instead
    assert not fresh.scores_dir.exists() or not list(fresh.scores_dir.iterdir())


def test_stall_watch_says_what_it_waits_for():
    import io

    out = io.StringIO()
    with StallWatch("score", lambda: "2 reader task(s) pending", after=0.2, stream=out) as watch:
        time.sleep(1.0)
        assert watch.reports >= 1
        seen = watch.reports
        for _ in range(10):  # ticks keep it quiet
            watch.tick()
            time.sleep(0.05)
        assert watch.reports == seen
    assert out.getvalue().startswith("score: nothing finished for ")
    assert "waiting for: 2 reader task(s) pending" in out.getvalue()


@pytest.mark.subprocess
@pytest.mark.ray
def test_one_cpu_runs_on_ray(scored_a, models, tmp_path):
    """The encoder actor and the reader tasks once each reserved the only CPU and waited for each other
    forever; a Ray of its own with one CPU (a subprocess: the tests' shared Ray has two)."""
    ws = Workspace.create(tmp_path / "ws")
    shutil.copytree(scored_a.shards_dir, ws.shards_dir, dirs_exist_ok=True)
    env = {**os.environ, "POOLSIEVE_STALL_SECONDS": "30"}
    out = subprocess.run([sys.executable, "-m", "poolsieve.pipeline.cli", "score", "-w", str(ws.root),
                          "--num-cpus", "1", "-m", models[0], "--chunk-size", "8", "--threads", "1"],
                         capture_output=True, text=True, timeout=540, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.stem for p in ws.scores_dir.glob("*.parquet")) == [t.stem for t in ws.shard_tars()]
    for shard, (df, _) in tables(ws).items():
        pd.testing.assert_frame_equal(df, tables(scored_a)[shard][0])


def test_reference_embedding_checks_its_models_first(tmp_path, capsys):
    (tmp_path / "refs" / "cat").mkdir(parents=True)
    rc = main(["score", "-w", str(tmp_path), "--executor", "local", "--reference", str(tmp_path / "refs"),
               "--name", "r", "-m", "ViT-B-33:openai"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown open_clip architecture 'ViT-B-33'" in err[0]


@pytest.mark.parametrize("cpus, gpus, encoders, decode_workers", [
    (1, 0, 0, 0), (2, 0, 0, 0), (1, 0, 3, 0), (1, 0, 0, 4), (8, 8, 0, 0), (16, 1, 0, 0), (0.5, 0, 0, 0), (3, 0, 0, 8),
])
def test_encoders_and_a_reader_always_fit_the_cpus(cpus, gpus, encoders, decode_workers):
    """Whatever the cluster, the encoders plus one reader fit in its CPUs (else each waits for the other)."""
    from poolsieve.pipeline.score.plan import plan_resources

    cfg = ScoreConfig(encoders=encoders, decode_workers=decode_workers)
    res = plan_resources(cfg, {"CPU": cpus, "GPU": gpus})
    assert res.encoders * res.encoder_cpus + res.reader_cpus <= cpus
    assert res.encoder_cpus > 0 and res.reader_cpus > 0 and res.readers >= 1
    assert res.use_gpu == (gpus > 0) and res.encoders == (encoders or gpus or 1)
    if cpus >= res.encoders + 1 and not gpus:  # room enough: whole CPUs, as before
        assert (res.encoder_cpus, res.reader_cpus) == (1.0, 1.0)
