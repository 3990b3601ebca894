"""Every built-in filter keeps the same uids from one pool however its rows are stored: shuffled across
tables and cut into tables of other sizes (one with no member row, some of a few rows), as two
downloads of one pool, or a download with other shard sizes, store them.

The pool has what makes order matter: exact duplicates (the same image bytes, the same image+text
embeddings, so equal distances and equal ranks), images repeated under other captions, equal scores
at a cut, failed rows. The test fails if any filter's result follows where rows sit; it also fails
for a registered filter it does not run (add its cases to ``CASES``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from embedding_pool import clustered, make_pool

from poolsieve.core.formats import write_embeddings
from poolsieve.filters.d2_pruning import d2_select
from poolsieve.filters.knn import sharded
from poolsieve.filters.registry import FILTERS, get_filter, load_builtin_filters

SIZES = (260, 240, 300)  # tables of the stored pool
RECUT = (97, 2, 183, 1, 5, 240, 11, 261)  # the same rows shuffled into these tables (the 1-row table: a failed row)
WORDS = np.array(["dog", "cat", "red", "car", "tree", "photo", "of", "a", "beach", "night", "goldfish", "the"])
BUDGET = "64MiB"
KEEP_ALL = [("no_filter", {}), ("dedup", {"by": ["uid"]})]

CASES = {
    "no_filter": [{}],
    "basic": [{}],
    "basic_filter": [{"min_side": 100}],
    "clip_score": [{"fraction": 0.3}, {"threshold": 0.05}],
    "text_based": [{}],
    "text_based_in1k": [{}],
    "laion2b": [{"threshold": 0.0}],
    "laion2b_fasttext": [{"threshold": 0.0}],
    "image_based": [{"target": "target", "clusters": 8},
                    {"target": "target", "clusters": 6, "sample_ratio": 0.5, "seed": 2}],
    "dedup": [{}, {"by": ["uid"]}, {"method": "semantic", "eps": 0.2, "clusters": 5, "order": "random"}],
    "semdedup": [{"eps": 0.15, "clusters": 8},
                 {"eps": 0.2, "clusters": 6, "order": "easy", "against": "any", "features": "image+text",
                  "sample_ratio": 0.5, "seed": 1}],
    "d2_pruning": [{"knn": "exact", "fraction": 0.3},
                   {"knn": "exact", "count": 150, "features": "image", "k": 3},
                   {"knn": "ivf", "nlist": 10, "fraction": 0.3},
                   {"knn": "ivf", "nlist": 8, "nprobe": 2, "features": "image", "count": 200, "knn_impl": "faiss"}],
    "decontaminate": [{"reference": "eval_tasks", "threshold": 0.95}],
}


def pool_rows(seed: int = 11) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(score-table rows, image embeddings, text embeddings) of the pool, in one order."""
    rng = np.random.default_rng(seed)
    n = sum(SIZES)
    img, txt = clustered(rng, n), clustered(rng, n)
    sha = [f"{v:064x}" for v in rng.integers(0, 2**62, n)]
    text = [" ".join(rng.choice(WORDS, size=m)) for m in rng.integers(1, 7, n)]
    score = np.round((img.astype(np.float32) * txt.astype(np.float32)).sum(1) * 0.3, 2)  # rounded: ties at cuts
    for src, dst in ((3, 40), (3, 41), (7, 300), (8, 500), (9, 700), (9, 701), (10, 720)):  # exact duplicates
        img[dst], txt[dst], sha[dst], text[dst], score[dst] = img[src], txt[src], sha[src], text[src], score[src]
    for src, dst in ((20, 60), (21, 600)):  # the same image, another caption
        img[dst], sha[dst] = img[src], sha[src]
    status = np.where(rng.random(n) < 0.03, "failed_to_decode", "success").astype(object)
    status[[3, 40, 41, 300]] = "success"
    df = pd.DataFrame({
        "uid": [f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**62, (n, 2))],
        "text": text, "sha256": sha, "status": status,
        "language": np.where(rng.random(n) < 0.8, "en", "fr"),
        "original_width": rng.integers(50, 400, n), "original_height": rng.integers(50, 400, n),
        "clip_b32_similarity_score": score,
    })
    df.loc[rng.random(n) < 0.05, "sha256"] = None
    return df, img, txt


def write_pool(root: Path, df: pd.DataFrame, img: np.ndarray, txt: np.ndarray, sizes, evals: dict) -> Path:
    """The rows cut into tables of ``sizes`` under ``root/scores``, with the references every filter needs
    (``evals``: the evaluation images' arrays)."""
    (root / "scores").mkdir(parents=True)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for t, (lo, hi) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        df.iloc[lo:hi].to_parquet(root / "scores" / f"{t:05d}.parquet", index=False)
        write_embeddings(root / "scores" / f"{t:05d}.npz", {"b32_img": img[lo:hi], "b32_txt": txt[lo:hi]})
    (root / "references").mkdir()
    np.savez(root / "references" / "target.npz", b32_img=clustered(np.random.default_rng(1), 30))
    np.savez(root / "references" / "eval_tasks.npz", **evals)
    return root


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> tuple[Path, Path]:
    """The pool as stored, and its rows shuffled into other tables (the failed rows among them)."""
    df, img, txt = pool_rows()
    evals = {"b32_img": img[100:130], "sha256": np.array([df["sha256"].iloc[i] or "" for i in (200, 201)])}
    stored = write_pool(tmp_path_factory.mktemp("stored"), df, img, txt, SIZES, evals)
    perm = list(np.random.default_rng(5).permutation(len(df)))
    failed = next(r for r in perm if df["status"].iloc[r] != "success")
    perm.remove(failed)
    perm.insert(sum(RECUT[:3]), failed)  # the table of RECUT[3] = 1 row: no member row
    perm = np.asarray(perm)
    recut = write_pool(tmp_path_factory.mktemp("recut"), df.iloc[perm].reset_index(drop=True), img[perm],
                       txt[perm], RECUT, evals)
    return stored, recut


def cases() -> list[tuple[str, dict]]:
    return [(name, params) for name, all_params in CASES.items() for params in all_params]


def test_every_registered_filter_has_a_case():
    load_builtin_filters()
    assert sorted(FILTERS) == sorted(CASES), "add the new filter's parameters to CASES"


@pytest.mark.parametrize(("name", "params"), cases(), ids=[f"{n}-{i}" for n, ps in CASES.items() for i in range(len(ps))])
def test_a_filter_keeps_the_same_uids_however_the_rows_are_stored(pools, name, params):
    stored, recut = pools
    if name == "laion2b":
        pytest.importorskip("gcld3")
    kept = [get_filter(name)(make_pool(root, memory_budget=BUDGET), **params) for root in (stored, recut)]
    assert kept[0] == kept[1]
    table = pd.concat([pd.read_parquet(p) for p in (stored / "scores").glob("*.parquet")])
    members = len(set(table.query("status == 'success'")["uid"]))
    if (name, params) in KEEP_ALL:
        assert len(kept[0]) == members
    else:
        assert 0 < len(kept[0]) < members, "the filter kept all or nothing: the case tests nothing"


def test_the_recut_pool_stores_other_rows_in_each_table(pools):
    stored, recut = pools
    first = [pd.read_parquet(p)["uid"].tolist() for p in sorted((stored / "scores").glob("*.parquet"))]
    again = [pd.read_parquet(p)["uid"].tolist() for p in sorted((recut / "scores").glob("*.parquet"))]
    assert sorted(sum(first, [])) == sorted(sum(again, [])) and first[0][:5] != again[0][:5]
    assert [len(t) for t in again] == list(RECUT)
    one = pd.read_parquet(recut / "scores" / "00003.parquet")
    assert (one["status"] != "success").all()  # a table without a member row


@pytest.mark.parametrize("params", [{"knn": "exact", "fraction": 0.3, "features": "image"},
                                    {"knn": "ivf", "nlist": 10, "fraction": 0.3}])
def test_d2_graph_and_selection_order_are_the_same_bits_however_the_rows_are_stored(pools, monkeypatch, params):
    """Not only the kept set: each row's neighbours, their distances to the last bit, the selection order;
    the recut pool also searched in units of 37 rows (GEMMs of other shapes)."""
    seen = []
    for root, unit in zip(pools, (None, 37), strict=True):
        if unit:
            monkeypatch.setattr(sharded, "search_rows", lambda budget, unit=unit: unit)
        pool = make_pool(root, memory_budget=BUDGET)
        uids = pool.read_columns([])["uid"].to_numpy()
        res = d2_select(pool, {**params, "device": "cpu"}, graph_rows=np.arange(len(uids)))
        by_uid = {u: (tuple(uids[res.neighbors[r]]), res.distances[r].tobytes()) for r, u in enumerate(uids)}
        seen.append((list(uids[res.order]), by_uid))
    assert seen[0][0] == seen[1][0]
    assert seen[0][1] == seen[1][1]
