"""A score table records which fastText model made its ``language`` column (file name and sha256, in the
parquet metadata next to the model records), so a filter can say which model its subset rests on."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
from factories import make_samples, write_img2dataset_shards
from test_score import save_tiny_checkpoint

from poolsieve.core.errors import InputError
from poolsieve.core.formats import recorded_language_model
from poolsieve.core.language import LID_ENV_VAR, lid_model_path, lid_model_sha256
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.datacomp_import import import_datacomp
from poolsieve.pipeline.score.stage import ScoreConfig, score_pool


def test_lid_model_sha256_is_the_digest_of_the_file_in_use(monkeypatch, tmp_path):
    bundled = lid_model_path()
    assert lid_model_sha256() == hashlib.sha256(bundled.read_bytes()).hexdigest()
    other = tmp_path / "lid.other.ftz"
    other.write_bytes(bundled.read_bytes() + b"\0")
    monkeypatch.setenv(LID_ENV_VAR, str(other))
    assert lid_model_sha256() == hashlib.sha256(other.read_bytes()).hexdigest()
    monkeypatch.setenv(LID_ENV_VAR, str(tmp_path / "missing.ftz"))
    with pytest.raises(InputError, match="missing.ftz"):
        lid_model_sha256()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("ckpt")
    return tuple(f"{k}=poolsieve-tiny:{save_tiny_checkpoint(root / f'{k}.pt', seed)}" for seed, k in enumerate("ab"))


def test_score_tables_record_the_language_model_and_keep_it_when_a_model_is_added(tmp_path, checkpoints,
                                                                                   local_runtime):
    a, b = checkpoints
    ws = Workspace.create(tmp_path / "ws")
    write_img2dataset_shards(ws.shards_dir, make_samples(12, seed=3, image_size=32), per_shard=6)
    score_pool(ws, ScoreConfig(models=[a], chunk_size=4, threads=1), local_runtime, quiet=True)
    want = {"file": lid_model_path().name, "sha256": lid_model_sha256()}
    assert want["file"] == "lid.176.ftz"
    for tar in ws.shard_tars():
        assert recorded_language_model(ws.score_table_path(tar.stem)) == want
    score_pool(ws, ScoreConfig(models=[a, b], chunk_size=4, threads=1), local_runtime, quiet=True)
    for tar in ws.shard_tars():  # the language column is kept as it was, and so is its record
        assert recorded_language_model(ws.score_table_path(tar.stem)) == want

    plain = Workspace.create(tmp_path / "no_language")
    shutil.copytree(ws.shards_dir, plain.shards_dir, dirs_exist_ok=True)
    score_pool(plain, ScoreConfig(models=[a], chunk_size=4, threads=1, language=False), local_runtime, quiet=True)
    assert recorded_language_model(plain.score_table_path("00000")) is None


def test_datacomp_import_records_the_language_model_it_used(tmp_path, local_runtime):
    samples = make_samples(5, seed=1)
    src = tmp_path / "datacomp"
    src.mkdir()
    pd.DataFrame({"uid": [s.uid for s in samples], "url": "http://x", "text": [s.caption for s in samples],
                  "clip_b32_similarity_score": np.linspace(0, 1, 5, dtype=np.float32)}).to_parquet(
        src / "part0.parquet", index=False)
    np.savez(src / "part0.npz", b32_img=np.zeros((5, 4), np.float16), b32_txt=np.zeros((5, 4), np.float16))
    with_language, without = Workspace.create(tmp_path / "a"), Workspace.create(tmp_path / "b")
    import_datacomp(with_language, src, local_runtime, language=True)
    import_datacomp(without, src, local_runtime, language=False)
    assert recorded_language_model(with_language.score_table_path("part0")) == {
        "file": "lid.176.ftz", "sha256": lid_model_sha256()}
    assert recorded_language_model(without.score_table_path("part0")) is None
