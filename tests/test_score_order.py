"""Score tables do not depend on the order a download wrote its shards in: rows (and npz rows) come out
sorted by sample key, chunks and batches are formed in that order, so a shard whose samples (and the
members of each sample) are shuffled gives byte-identical score files. A table written in a tar's own
order before rows were sorted still gets a model added, row by row."""

from __future__ import annotations

import filecmp
import io
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import make_samples, write_img2dataset_shards
from test_score import save_tiny_checkpoint

from poolsieve.core.formats import embedding_keys, read_score_table, score_column
from poolsieve.core.runtime import Runtime
from poolsieve.core.shard_reader import read_shard
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

SHARDS, PER_SHARD = 3, 21


def shuffle_tar(tar: Path, seed: int) -> None:
    """Rewrite ``tar`` with its samples in a seeded random order, each sample's members reversed."""
    with tarfile.open(tar) as src:
        items = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    samples: dict[str, list] = {}
    for m, data in items:
        samples.setdefault(m.name.split(".")[0], []).append((m, data))
    keys = list(samples)
    random.Random(seed).shuffle(keys)
    with tarfile.open(tar, "w") as dst:
        for key in keys:
            for m, data in reversed(samples[key]):
                dst.addfile(m, io.BytesIO(data))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("ckpt")
    return tuple(f"{k}=poolsieve-tiny:{save_tiny_checkpoint(root / f'{k}.pt', seed)}" for seed, k in enumerate("ab"))


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> tuple[Workspace, Workspace]:
    """The same pool twice: tars in key order, and tars whose samples a download wrote in another order."""
    samples = make_samples(SHARDS * PER_SHARD, seed=8, image_size=40, fail_every=10)
    samples[5].jpeg = samples[5].jpeg[:-60]  # undecodable: a failed row
    root = tmp_path_factory.mktemp("pools")
    in_order, shuffled = Workspace.create(root / "in_order"), Workspace.create(root / "shuffled")
    write_img2dataset_shards(in_order.shards_dir, samples, per_shard=PER_SHARD)
    shutil.copytree(in_order.shards_dir, shuffled.shards_dir, dirs_exist_ok=True)
    for i, tar in enumerate(shuffled.shard_tars()):
        shuffle_tar(tar, seed=i)
        assert tar.read_bytes() != (in_order.shards_dir / tar.name).read_bytes()
    return in_order, shuffled


def config(*models: str) -> ScoreConfig:
    return ScoreConfig(models=list(models), chunk_size=8, batch_size=4, threads=1)


@pytest.fixture(scope="module")
def scored(pools, checkpoints) -> tuple[Workspace, Workspace]:
    for ws in pools:
        assert score_pool(ws, config(*checkpoints), Runtime(executor="local"), quiet=True)["scored now"] == SHARDS
    return pools


def test_the_reader_returns_samples_sorted_by_key_whatever_the_tar_order(pools):
    in_order, shuffled = pools
    for tar in shuffled.shard_tars():
        got = read_shard(tar)
        want = read_shard(in_order.shards_dir / tar.name)
        assert [s.key for s in got] == sorted(s.key for s in got)
        assert [(s.key, s.image, s.text, s.meta) for s in got] == [(s.key, s.image, s.text, s.meta) for s in want]


def test_shuffled_shards_give_byte_identical_score_files(scored):
    in_order, shuffled = scored
    names = sorted(p.name for p in in_order.scores_dir.iterdir() if p.suffix in (".parquet", ".npz"))
    assert len(names) == 2 * SHARDS
    same, differ, missing = filecmp.cmpfiles(in_order.scores_dir, shuffled.scores_dir, names, shallow=False)
    assert (differ, missing) == ([], [])
    for tar in in_order.shard_tars():
        df = read_score_table(in_order.score_table_path(tar.stem))
        assert list(df["key"]) == sorted(df["key"]) and len(df) == len(read_shard(tar))


def test_a_model_is_added_row_by_row_to_a_table_in_an_older_tar_order(scored, checkpoints, tmp_path, local_runtime):
    """A table scored before rows were sorted (its rows in a shuffled tar's order) keeps its order; the
    added model's columns and embeddings land on the rows of their own samples."""
    a, b = checkpoints
    in_order = scored[0]
    ws = Workspace.create(tmp_path / "ws")
    shutil.copytree(in_order.shards_dir, ws.shards_dir, dirs_exist_ok=True)
    score_pool(ws, config(a), local_runtime, quiet=True)
    rng = np.random.default_rng(0)
    for tar in ws.shard_tars():  # rewrite each table and npz as an older run would have: in a tar order
        df = pd.read_parquet(ws.score_table_path(tar.stem))
        order = rng.permutation(len(df))
        df.iloc[order].reset_index(drop=True).to_parquet(ws.score_table_path(tar.stem), index=False)
        with np.load(ws.embeddings_path(tar.stem)) as z:
            np.savez(ws.embeddings_path(tar.stem), **{k: z[k][order] for k in z.files})
    summary = score_pool(ws, config(a, b), local_runtime, quiet=True)
    assert summary["models added to scored shards"] == f"b ({SHARDS} shard(s))"
    for tar in ws.shard_tars():
        old = read_score_table(ws.score_table_path(tar.stem))
        ref = read_score_table(in_order.score_table_path(tar.stem)).set_index("key").loc[old["key"]]
        np.testing.assert_array_equal(old[score_column("b")].to_numpy(), ref[score_column("b")].to_numpy())
        np.testing.assert_array_equal(old[score_column("a")].to_numpy(), ref[score_column("a")].to_numpy())
        rows = pd.Index(read_score_table(in_order.score_table_path(tar.stem))["key"]).get_indexer(old["key"])
        with np.load(ws.embeddings_path(tar.stem)) as got, np.load(in_order.embeddings_path(tar.stem)) as want:
            for k in embedding_keys("b"):
                np.testing.assert_array_equal(got[k], want[k][rows])
