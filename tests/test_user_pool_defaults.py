"""Defaults that hold on a pool no one tuned them for (issue 26): semdedup's ``eps: auto`` is calibrated on
the pool's own nearest-neighbour distances, and clip_score names the fix when its default column is missing.
(decontaminate's calibrated default: ``test_decontaminate.py``.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import write_embeddings
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.filters import _calibrate
from poolsieve.filters.registry import ScoredPool, get_filter
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter

ROWS, DIM = 600, 32
PLANTED = list(range(0, 600, 40))  # rows 0, 40, ...: each a copy of the row after it


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def weak_pool(root: Path, seed: int = 3, order: np.ndarray | None = None) -> ScoredPool:
    """Embeddings of a weak scorer: every row within cosine ~0.99 of every other; rows ``PLANTED`` are copies
    of their next row (the same image: identical, or re-encoded, moved by ~1e-4). ``order`` permutes the rows."""
    rng = np.random.default_rng(seed)
    emb = unit(unit(rng.standard_normal((1, DIM))) + 0.02 * rng.standard_normal((ROWS, DIM)))
    for i, row in enumerate(PLANTED):
        emb[row] = emb[row + 1] if i % 2 else unit(emb[row + 1:row + 2] + 1e-4 * rng.standard_normal((1, DIM)))[0]
    uids = np.array([f"{i:032x}" for i in range(ROWS)])
    order = np.arange(ROWS) if order is None else order
    (root / "scores").mkdir(parents=True)
    for shard, rows in enumerate(np.array_split(order, 2)):
        pd.DataFrame({"uid": uids[rows], "status": "success", "clip_scorer_similarity_score": rng.random(len(rows))}
                     ).to_parquet(root / "scores" / f"{shard:05d}.parquet", index=False)
        write_embeddings(root / "scores" / f"{shard:05d}.npz", {"scorer_img": emb[rows], "scorer_txt": emb[rows]})
    return ScoredPool(sorted((root / "scores").glob("*.parquet")))


def test_semdedup_default_drops_the_copies_of_a_weak_scorer_and_nothing_else(tmp_path) -> None:
    pool = weak_pool(tmp_path)
    fixed = get_filter("semdedup")(pool, eps=0.05, clusters=3, device="cpu")
    assert len(fixed) < 0.1 * ROWS  # the paper's eps: nearly everything is a near-duplicate of something
    report: dict = {}
    kept = set(get_filter("semdedup")(pool, clusters=3, device="cpu", report=report).to_hex())
    dropped = {f"{i:032x}" for i in range(ROWS)} - kept
    # each planted pair loses one of its two rows, and no other row goes
    assert len(dropped) == len(PLANTED)
    assert all(({f"{r:032x}", f"{r + 1:032x}"} & dropped) for r in PLANTED)
    assert 0 < report["eps"] < 0.01 and report["summary"].startswith(f"{len(PLANTED)} near-duplicates; eps ")


def test_auto_eps_is_a_tenth_of_the_median_nearest_neighbour_distance(tmp_path) -> None:
    """One cluster, every row a query: the brute-force median over the pool's nearest-neighbour distances."""
    pool = weak_pool(tmp_path)
    report: dict = {}
    get_filter("semdedup")(pool, clusters=1, device="cpu", report=report)
    x = unit(pool.load_embeddings(["scorer_img"])["scorer_img"].astype(np.float32))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    d = 1.0 - sims.max(axis=1).astype(np.float64)
    expected = 0.1 * np.median(d[d > 1e-6])
    assert report["eps"] == pytest.approx(expected, rel=1e-5)


def test_calibration_does_not_depend_on_row_order(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(_calibrate, "QUERIES", 100)  # fewer queries than rows: chosen by content
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    perm = np.random.default_rng(1).permutation(500)
    chosen = _calibrate.content_rows(x, 100, seed=0)
    assert sorted(map(bytes, x[chosen])) == sorted(map(bytes, x[perm][_calibrate.content_rows(x[perm], 100, seed=0)]))
    labels = np.zeros(500, dtype=np.int64)
    assert _calibrate.auto_eps(x, labels, 0) == _calibrate.auto_eps(x[perm], labels, 0)
    one: dict = {}
    two: dict = {}
    get_filter("semdedup")(weak_pool(tmp_path / "a"), clusters=1, device="cpu", report=one)
    get_filter("semdedup")(weak_pool(tmp_path / "b", order=np.random.default_rng(2).permutation(ROWS)),
                           clusters=1, device="cpu", report=two)
    assert one["eps"] == two["eps"]


def test_semdedup_eps_must_be_auto_or_a_number(tmp_path) -> None:
    pool = weak_pool(tmp_path)
    for eps in ("often", -0.1, True, float("nan")):
        with pytest.raises(ConfigError, match="eps must be 'auto' or a number"):
            get_filter("semdedup")(pool, eps=eps)


def test_clip_score_on_a_pool_without_the_default_column_names_the_call_to_paste(tmp_path) -> None:
    pool = weak_pool(tmp_path)
    with pytest.raises(InputError) as caught:
        get_filter("clip_score")(pool, fraction=0.3)
    message = str(caught.value)
    assert message.startswith(f"{pool.tables[0]}: clip_score reads column clip_b32_similarity_score (the default")
    assert message.endswith("which this score table lacks; use clip_score(model=scorer, fraction=0.3)")
    ws = Workspace.open(tmp_path)  # the command line says the same, and the call it names works
    with pytest.raises(InputError, match=r"use clip_score\(model=scorer, threshold=0.5\)"):
        run_filter(ws, FilterConfig(spec=["top = clip_score(threshold=0.5)"]), Runtime(executor="local"))
    out = run_filter(ws, FilterConfig(spec=["top = clip_score(model=scorer, threshold=0.5)"]), Runtime(executor="local"))
    assert 0.3 * ROWS < out["top"]["count"] < 0.7 * ROWS
    with pytest.raises(InputError, match="use clip_score.model=scorer, fraction=0.3.$"):
        get_filter("clip_score")(pool, model="l14", fraction=0.3)
