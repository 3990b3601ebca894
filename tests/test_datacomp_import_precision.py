"""``score --import-datacomp`` keeps the source's score precision (issue 19, part 4): a float64 column stays
float64, so rows within 1e-9 of a threshold or of a fraction's cut fall where DataComp's own float64
comparison puts them; and it makes a workspace folder that does not exist yet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.filters.registry import ScoredPool, get_filter
from poolsieve.pipeline.cli import main
from poolsieve.pipeline.score.datacomp_import import import_datacomp

LOCAL = Runtime(executor="local")
CUT = 0.3


def _source(folder: Path, l14: np.ndarray, b32: np.ndarray, files: int = 2) -> list[str]:
    """DataComp-format metadata: parquet (uid, url, text, sizes, both score columns) + npz, ``files`` files."""
    folder.mkdir(parents=True)
    uids = [f"{i:032x}" for i in range(len(l14))]
    for f, rows in enumerate(np.array_split(np.arange(len(l14)), files)):
        pd.DataFrame({"uid": [uids[i] for i in rows], "url": [f"http://127.0.0.1:1/{i}.jpg" for i in rows],
                      "text": ["a photo of a dog"] * len(rows), "original_width": 300, "original_height": 300,
                      "clip_b32_similarity_score": b32[rows], "clip_l14_similarity_score": l14[rows]},
                     ).to_parquet(folder / f"{f:08d}.parquet", index=False)
        emb = np.ones((len(rows), 4), np.float16)
        np.savez(folder / f"{f:08d}.npz", b32_img=emb, b32_txt=emb, l14_img=emb, l14_txt=emb)
    return uids


def _datacomp_threshold(scores: np.ndarray, uids: list[str], threshold: float) -> set[str]:
    return {u for u, s in zip(uids, scores, strict=True) if s >= threshold}


def _datacomp_fraction(scores: np.ndarray, uids: list[str], fraction: float) -> set[str]:
    """DataComp's rule on the float64 column: the int(n * f)-th largest is the threshold, ties kept."""
    threshold = -np.sort(-scores)[int(len(scores) * fraction)]
    return _datacomp_threshold(scores, uids, threshold)


def _kept(pool: ScoredPool, **params) -> set[str]:
    return set(get_filter("clip_score")(pool, **params).to_hex())


def test_float64_scores_cut_where_datacomp_cuts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # 200 rows: 60 within 1e-9 of the cut (both sides and on it), the rest spread around it
    near = CUT + rng.choice([-9e-10, -3e-10, -1e-10, 0.0, 1e-10, 3e-10, 9e-10], 60)
    l14 = rng.permutation(np.concatenate([near, rng.normal(CUT, 0.05, 140)]))
    b32 = np.float32(rng.normal(0.28, 0.05, 200))  # a float32 source column stays float32
    uids = _source(tmp_path / "dc", l14, b32.astype(np.float32))
    assert len({np.float32(v) for v in near}) < len(set(near))  # float32 would merge rows on both sides

    ws = Workspace.create(tmp_path / "ws")
    summary = import_datacomp(ws, tmp_path / "dc", LOCAL, language=False)
    assert summary["rows kept"] == 200
    schema = pq.read_schema(ws.score_table_path("00000000"))
    assert str(schema.field("clip_l14_similarity_score").type) == "double"
    assert str(schema.field("clip_b32_similarity_score").type) == "float"
    stored = np.concatenate([pd.read_parquet(p)["clip_l14_similarity_score"].to_numpy() for p in ws.score_tables()])
    assert stored.dtype == np.float64 and np.array_equal(stored, l14)  # bit for bit

    pool = ScoredPool(ws.score_tables(), LOCAL)
    column = "clip_l14_similarity_score"
    expected = _datacomp_threshold(l14, uids, CUT)
    assert _kept(pool, column=column, threshold=CUT) == expected
    assert expected != _datacomp_threshold(l14.astype(np.float32).astype(np.float64), uids, CUT)  # float32 flips
    for fraction in (0.2, 0.35, 0.5, 0.6):  # cuts that fall among the rows 1e-9 apart
        assert _kept(pool, column=column, fraction=fraction) == _datacomp_fraction(l14, uids, fraction), fraction
    assert _kept(pool, model="b32", fraction=0.3) == _datacomp_fraction(b32.astype(np.float64), uids, 0.3)


def test_import_into_a_new_workspace_folder(tmp_path: Path, capsys) -> None:
    l14 = np.linspace(0.1, 0.4, 20)
    _source(tmp_path / "dc", l14, l14.astype(np.float32), files=1)
    new = tmp_path / "not" / "yet" / "there"
    assert main(["score", "-w", str(new), "--import-datacomp", str(tmp_path / "dc"), "--no-language",
                 "--executor", "local"]) == 0
    ws = Workspace.open(new)
    assert len(pd.read_parquet(ws.score_table_path("00000000"))) == 20 and ws.embeddings_path("00000000").exists()
    assert "rows kept" in capsys.readouterr().out
    # a plain score run still refuses a missing workspace (it has nothing to score there)
    assert main(["score", "-w", str(tmp_path / "missing"), "--executor", "local"]) == 2
    assert "workspace does not exist" in capsys.readouterr().err
