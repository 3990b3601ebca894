"""The pool's row order (``filters/_row_order``) against its definition, and the searches whose result must
not follow where a row is stored: nearest centroids whatever the other rows of a batch, ties to the lower
centroid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from embedding_pool import build_embedding_pool, clustered, make_pool
from reference_filters import order_key, pool_order, row_order

from poolsieve.core.uids import UidSet
from poolsieve.filters import _kmeans, _row_order
from poolsieve.filters._spill import spill_folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build_embedding_pool(tmp_path_factory.mktemp("order_ws"))


def test_keys_are_the_definition():
    rng = np.random.default_rng(0)
    uids = [f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**63, (200, 2), dtype=np.uint64)]
    uids += ["0" * 32, "f" * 32]
    keys = UidSet.from_hex(uids).keys  # sorted: compare by uid
    hexes = UidSet(keys).to_hex()
    for seed in (0, 1, 2**63 + 5):
        got = _row_order.order_keys(keys, seed)
        assert got.dtype == np.uint64
        assert got.tolist() == [order_key(u, seed) for u in hexes]
    assert not np.array_equal(_row_order.order_keys(keys, 0), _row_order.order_keys(keys, 1))


@pytest.mark.parametrize("budget", ["64MiB", None])
def test_ranks_are_the_row_order_however_many_buckets(workspace, monkeypatch, budget):
    if budget:
        monkeypatch.setattr(_row_order, "RANK_ROW_BYTES", 2**22)  # a bucket holds ~6 rows: ~128 buckets
    pool = make_pool(workspace, memory_budget=budget or "1GiB")
    counts = [170 - 1, 150 - 1, 180 - 1]
    for seed in (0, 7):
        with spill_folder(pool, "order-test") as folder:
            ranks, rows = _row_order.rank_rows(pool, counts, seed, folder)
            want = pool_order(pool, seed)  # includes a uid repeated across tables: pool order between them
            assert np.array_equal(rows[0:len(rows)], want)
            assert np.array_equal(ranks[0:len(ranks)], np.argsort(want))
            assert sorted(p.name for p in folder.iterdir()) == ["owner.json", "ranks.npy", "rows.npy"]


def test_first_rows_are_the_first_in_the_order_among_those_a_mask_passes(workspace):
    pool = make_pool(workspace)
    counts = [169, 149, 179]
    rng = np.random.default_rng(2)
    masks = [rng.random(c) < 0.6 for c in counts]
    mask = np.concatenate(masks)
    passing = np.flatnonzero(mask)
    uids = pool.read_columns([])["uid"].to_numpy()
    for m in (1, 40, int(mask.sum()), 10_000):
        want = passing[row_order(uids[passing], 3)][:m]
        assert np.array_equal(_row_order.first_rows(pool, counts, m, 3, masks), want)
    assert np.array_equal(_row_order.first_rows(pool, counts, 25, 3), pool_order(pool, 3)[:25])


def test_first_rows_read_the_tables_again_when_too_few_fall_below_the_cut(workspace, monkeypatch):
    pool = make_pool(workspace)
    counts = [169, 149, 179]
    calls = []
    real = pool.runtime.map
    monkeypatch.setattr(pool.runtime, "map", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    monkeypatch.setattr(_row_order, "MARGIN_SD", -8)  # a cut far too low: about 0.1 of the rows asked for
    assert np.array_equal(_row_order.first_rows(pool, counts, 100, 5), pool_order(pool, 5)[:100])
    assert len(calls) > 1


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("count", [1, 3, 40])
def test_nearest_centroids_of_a_row_do_not_depend_on_its_batch(monkeypatch, metric, count):
    monkeypatch.setattr(_kmeans, "CENTROID_BLOCK", 64)  # several centroid blocks
    rng = np.random.default_rng(4)
    x = clustered(rng, 3000, dim=32, centres=50)
    c = clustered(rng, 150, dim=32, centres=50).astype(np.float32)
    c[100], c[130] = c[7], c[60]  # equal distances: the lower number first
    labels, values = _kmeans.nearest_centroids(x, c, count, metric)
    perm = rng.permutation(len(x))
    pieces = [(perm[a:b]) for a, b in ((0, 1), (1, 19), (19, 2500), (2500, 3000))]
    for piece in pieces:
        lab, val = _kmeans.nearest_centroids(x[piece], c, count, metric)
        assert np.array_equal(lab, labels[piece]) and np.array_equal(val, values[piece])
    x32 = x.astype(np.float64)
    c64 = c.astype(np.float64)
    score = ((x32[:, None] - c64[None]) ** 2).sum(-1) if metric == "l2" else -(x32 @ c64.T)
    got = np.take_along_axis(score, labels, axis=1)  # the count smallest, nearest first (float32 apart)
    assert (np.diff(got, axis=1) >= -1e-4).all()
    rest = score.copy()
    np.put_along_axis(rest, labels, np.inf, axis=1)
    assert (got.max(axis=1) <= rest.min(axis=1) + 1e-4).all()
    twins = np.flatnonzero(np.isin(labels[:, 0], [7, 60]))
    assert len(twins) and not np.isin(labels[:, 0], [100, 130]).any()
