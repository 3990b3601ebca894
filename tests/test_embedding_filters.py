"""Embedding filters (d2_pruning, image_based, dedup, semdedup) against brute-force numpy definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from embedding_pool import DIM, build_embedding_pool, clustered, make_pool, unit
from reference_filters import order_key, pool_order, row_order

from poolsieve.core.errors import ConfigError, InputError, PoolsieveWarning
from poolsieve.core.uids import UidSet
from poolsieve.filters import _topk
from poolsieve.filters._kmeans import kmeans
from poolsieve.filters.d2_pruning import d2_select
from poolsieve.filters.image_based import image_based_run
from poolsieve.filters.knn import exact as knn_exact
from poolsieve.filters.knn import index as knn_index
from poolsieve.filters.knn import lists as knn_lists
from poolsieve.filters.knn import sharded as knn_sharded
from poolsieve.filters.knn.graph import knn_graph, recall_at_k
from poolsieve.filters.registry import get_filter
from poolsieve.filters.semdedup import semdedup_run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """3 score tables (one failed row each), b32 embeddings, a target set, duplicates of several kinds."""
    return build_embedding_pool(tmp_path_factory.mktemp("emb_ws"))


def features_of(pool, names):
    emb = pool.load_embeddings(names)
    return np.concatenate([emb[n] for n in names], axis=1)


# ---------------------------------------------------------------------- brute-force references
def brute_knn(x, k):
    x = x.astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, 1)


def brute_d2(scores, neighbors, dist, n_select, gamma_f=1.0, gamma_r=1.0, shift=0.115, rank=None):
    """The greedy selection by rescans; equal values: the lowest ``rank`` (default: the lowest row)."""
    s = np.maximum(scores.astype(np.float64) + shift, 1e-7)
    g = s + (np.exp(-gamma_f * dist.astype(np.float64)) * s[neighbors]).sum(1)
    w = np.exp(-gamma_r * dist.astype(np.float64))
    rank = np.arange(len(g)) if rank is None else rank
    taken = np.zeros(len(g), dtype=bool)
    order = []
    for _ in range(n_select):
        cand = np.where(taken, -np.inf, g)
        tied = np.flatnonzero(cand == cand.max())
        i = int(tied[np.argmin(rank[tied])])
        order.append(i)
        taken[i] = True
        for j, wj in zip(neighbors[i], w[i], strict=True):
            if not taken[j]:
                g[j] -= g[i] * wj
    return np.array(order)


def lloyd_step(x, c, spherical=False):
    """One Lloyd update from centroids ``c`` (every cluster non-empty here)."""
    x = x.astype(np.float64)
    lab = ((x[:, None, :] - c[None, :, :].astype(np.float64)) ** 2).sum(-1).argmin(1)
    new = np.stack([x[lab == j].mean(0) for j in range(len(c))])
    return unit(new) if spherical else new


# ------------------------------------------------------------------------------- kNN and k-means
def test_exact_knn_matches_brute_force_and_removes_self_by_id():
    rng = np.random.default_rng(0)
    x = clustered(rng, 600)
    x[10] = x[11]  # exact duplicates: the twin stays a neighbour at distance 0, self goes
    g = knn_graph(x, 5, method="exact", device="cpu")
    ref_i, ref_d = brute_knn(x, 5)
    assert np.array_equal(np.sort(g.neighbors, 1), np.sort(ref_i, 1))
    assert np.array_equal(g.neighbors[12:], ref_i[12:])
    np.testing.assert_allclose(g.distances, ref_d, atol=1e-5)
    assert g.neighbors[10, 0] == 11 and g.neighbors[11, 0] == 10
    assert (g.neighbors != np.arange(600)[:, None]).all()


@pytest.mark.parametrize("impl", ["gemm", "faiss"])
def test_ivf_full_probe_is_exact_and_calibration_reaches_target(impl):
    rng = np.random.default_rng(1)
    x = clustered(rng, 1500, centres=30, noise=0.4)
    exact = knn_graph(x, 5, method="exact", device="cpu")
    full = knn_graph(x, 5, method="ivf", nlist=16, nprobe=16, device="cpu", impl=impl)
    assert np.array_equal(full.neighbors, exact.neighbors) and full.impl == impl
    auto = knn_graph(x, 5, method="ivf", nlist=16, recall=0.9, device="cpu", impl=impl)
    again = knn_graph(x, 5, method="ivf", nlist=16, recall=0.9, device="cpu", impl=impl)
    assert auto.calibrated_recall >= 0.9 and auto.nprobe <= 16
    assert recall_at_k(auto.neighbors, exact.neighbors) >= 0.85
    assert np.array_equal(auto.neighbors, again.neighbors)  # seeded: deterministic


@pytest.mark.parametrize("impl", ["gemm", "faiss"])
def test_ivf_per_part_indexes_rerank_to_the_exact_graph(impl):
    rng = np.random.default_rng(4)
    img = clustered(rng, 1200, centres=20, noise=0.5)
    txt = clustered(rng, 1200, centres=20, noise=0.5)
    txt[::5] = txt[rng.permutation(1200)[::5]]  # mismatched pairs: near no cluster of the concatenation
    x = np.concatenate([img, txt], axis=1)
    exact = knn_graph(x, 5, method="exact", device="cpu")
    # every list probed, every row a candidate: the re-rank is an exact search over image+text
    full = knn_graph(x, 5, parts=(DIM, DIM), candidates=1199, method="ivf", nlist=12, nprobe=12, impl=impl)
    assert np.array_equal(full.neighbors, exact.neighbors)
    np.testing.assert_allclose(full.distances, exact.distances, atol=1e-4)
    auto = knn_graph(x, 5, parts=(DIM, DIM), method="ivf", nlist=12, recall=0.9, device="cpu", impl=impl)
    assert auto.calibrated_recall >= 0.9
    assert recall_at_k(auto.neighbors, exact.neighbors) >= 0.85
    assert (auto.neighbors != np.arange(1200)[:, None]).all()
    assert (np.diff(auto.distances, axis=1) >= 0).all()
    for row in auto.neighbors:  # a row proposed by both parts counts once
        assert len(np.unique(row)) == 5
    with pytest.raises(ConfigError):
        knn_graph(x, 5, parts=(DIM, DIM + 1), method="ivf")
    with pytest.raises(ConfigError):
        knn_graph(x, 5, parts=(DIM, DIM), candidates=3, method="ivf")
    with pytest.warns(PoolsieveWarning, match="below the target"):  # too few candidates for the target
        short = knn_graph(x, 5, parts=(DIM, DIM), candidates=5, method="ivf", nlist=12, recall=0.99, impl=impl)
    assert short.calibrated_recall < 0.99 and short.nprobe == 12 and short.candidates == 5


def test_sorted_topk_shortlist_keeps_ties_in_id_order():
    rng = np.random.default_rng(9)
    d = rng.integers(0, 6, (200, 90)).astype(np.float32)  # many ties
    d[:5, :40] = 0  # more ties at the cut than the shortlist holds
    d[7, 3:] = np.inf
    i = np.stack([rng.permutation(1000)[:90] for _ in range(200)])
    for k in (1, 3, 6):
        got_d, got_i = _topk.sorted_topk(d, i, k)
        ref_d, ref_i = _topk.sorted_topk_full(d, i, k)
        assert np.array_equal(got_i, ref_i) and np.array_equal(got_d, ref_d)


def test_smallest_k_takes_equal_values_at_the_cut_by_id():
    """Whatever the columns' order, the k smallest by (value, id): a block's cut never depends on layout."""
    rng = np.random.default_rng(3)
    d = rng.integers(0, 4, (300, 50)).astype(np.float32)  # ties at the cut in most rows
    ids = rng.permutation(50) * 7
    for k in (1, 5, 20, 50, 60):
        got = _topk.smallest_k(d, k, ids)
        want = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
        assert np.array_equal(np.sort(ids[got], 1), np.sort(ids[want], 1)), k
        perm = rng.permutation(50)  # the same values and ids in another column order
        again = _topk.smallest_k(d[:, perm], k, ids[perm])
        assert np.array_equal(np.sort(ids[perm][again], 1), np.sort(ids[got], 1)), k


def test_block_search_cuts_ties_by_id_whatever_the_list_order():
    rng = np.random.default_rng(6)
    base = np.repeat(clustered(rng, 40), 6, axis=0)  # every row six times: ties everywhere
    ids = rng.permutation(len(base)).astype(np.int64)
    queries = clustered(rng, 30).astype(np.float32)
    ref_d, ref_i = knn_exact.exact_topk(base, ids, queries, 4)
    for order in (np.arange(len(base)), rng.permutation(len(base))):
        index = knn_index.IvfIndex(np.zeros((1, DIM), np.float32), np.array([0, len(base)]), base[order], ids[order],
                                   knn_index.sq_norms(base[order]), np.argsort(ids[order]))
        d, i = index.search(queries, 4)
        assert np.array_equal(i, ref_i)
        np.testing.assert_allclose(d, ref_d, atol=1e-5)
    brute = ((queries[:, None, :] - base[None].astype(np.float32)) ** 2).sum(-1)
    want = np.lexsort((np.broadcast_to(ids, brute.shape), np.round(brute, 4)), axis=1)[:, :4]
    assert np.array_equal(ref_i, ids[want])


def test_ivf_lists_stay_balanced_when_a_mode_is_uncovered():
    """Spherical lists: low-norm centroids no longer swallow rows their own cluster misses."""
    rng = np.random.default_rng(5)
    x = clustered(rng, 8000, dim=32, centres=400, noise=0.5)
    centroids = knn_lists.train_lists(x[knn_lists.training_rows(len(x), 60, 0)].astype(np.float32), 60, 0, "cpu")
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    sizes = np.bincount(knn_lists.coarse_probes(x, centroids, 1, "cpu")[:, 0], minlength=60)
    assert sizes.max() < 5 * sizes.mean()


def test_search_units_cover_the_rows_in_order_within_a_size():
    tables = [Path(f"{i:05d}.parquet") for i in range(6)]
    counts = [40, 70, 10, 250, 5, 5]
    units = knn_sharded.row_segments(tables, counts, 100)
    assert all(sum(s.hi - s.lo for s in u) <= 100 for u in units)
    rows = [(s.t, s.start + r) for u in units for s in u for r in range(s.lo, s.hi)]
    assert [r for _, r in rows] == list(range(sum(counts)))  # every row once, in pool order
    assert [s.t for s in units[2]] == [3]  # the big table is split, small ones are grouped
    assert knn_sharded.row_segments(tables, [1] * 6, 10**6) == [[knn_sharded.Segment(t, i, i, 0, 1)
                                                                  for i, t in enumerate(tables)]]


@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_iterations_are_numpy_lloyd_steps_and_deterministic(spherical):
    rng = np.random.default_rng(2)
    x = clustered(rng, 800, centres=8).astype(np.float32)
    four = kmeans(x, 8, niter=4, seed=3, spherical=spherical, device="cpu")
    five = kmeans(x, 8, niter=5, seed=3, spherical=spherical, device="cpu")
    np.testing.assert_allclose(five.centroids, lloyd_step(x, four.centroids, spherical), atol=1e-5)
    assert np.array_equal(five.centroids, kmeans(x, 8, niter=5, seed=3, spherical=spherical).centroids)
    assert not np.array_equal(five.centroids, kmeans(x, 8, niter=5, seed=4, spherical=spherical).centroids)
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(five.centroids, axis=1), 1, atol=1e-5)
    with pytest.raises(ConfigError):
        kmeans(x[:5], 8)


# --------------------------------------------------------------------------------------- D2
def test_d2_exact_graph_matches_brute_force_order(workspace):
    """Brute force over the rows in the pool's row order (ties: the row first in it), mapped back."""
    pool = make_pool(workspace)
    res = d2_select(pool, {"fraction": 0.4, "k": 4, "knn": "exact", "features": "image+text", "device": "cpu"},
                    graph_rows=np.arange(497))
    perm = pool_order(pool, 0)
    x = features_of(pool, ["b32_img", "b32_txt"])
    scores = pool.read_columns(["clip_b32_similarity_score"])["clip_b32_similarity_score"].to_numpy()
    sorted_i, _ = brute_knn(x[perm], 4)
    ref_i = np.empty_like(sorted_i)
    ref_i[perm] = perm[sorted_i]
    assert np.array_equal(res.neighbors, ref_i)
    expected = perm[brute_d2(scores[perm], sorted_i, res.distances[perm], int(0.4 * len(x)))]
    assert np.array_equal(res.order, expected)
    kept = get_filter("d2_pruning")(pool, fraction=0.4, k=4, knn="exact", device="cpu")
    keys = pool.uid_keys()
    assert kept == UidSet(keys[expected]) == res.uids
    assert len(keys) == 497  # the three failed rows are not pool members


def test_d2_params_and_count(workspace):
    pool = make_pool(workspace)
    res = d2_select(pool, {"count": 50, "k": 3, "features": "image", "gamma_forward": 2.0, "gamma_reverse": 0.5,
                           "knn": "exact"}, graph_rows=np.arange(497))
    scores = pool.read_columns(["clip_b32_similarity_score"])["clip_b32_similarity_score"].to_numpy()
    ref_i, _ = brute_knn(features_of(pool, ["b32_img"]), 3)
    assert np.array_equal(np.sort(res.neighbors, 1), np.sort(ref_i, 1))
    rank = np.argsort(pool_order(pool, 0))
    assert np.array_equal(res.order, brute_d2(scores, res.neighbors, res.distances, 50, 2.0, 0.5, rank=rank))
    fn = get_filter("d2_pruning")
    for bad in ({"fraction": 1.5}, {"fraction": 0.1, "count": 3}, {"features": "audio"}, {"k": 0},
                {"embedding": "l14"}, {"gamma_forward": -1}):
        with pytest.raises(ConfigError):
            fn(pool, **bad)


def test_d2_sharded_on_ray_equals_in_process(workspace, ray_runtime):
    local, ray_pool = make_pool(workspace), make_pool(workspace, ray_runtime)
    rows = np.arange(497)
    for params in ({"knn": "exact"}, {"knn": "ivf", "nlist": 8}, {"knn": "ivf", "nlist": 8, "knn_impl": "faiss"}):
        a = d2_select(local, {"fraction": 0.3, "k": 5, **params}, graph_rows=rows)
        b = d2_select(ray_pool, {"fraction": 0.3, "k": 5, **params}, graph_rows=rows)
        assert np.array_equal(a.neighbors, b.neighbors), params
        np.testing.assert_allclose(a.distances, b.distances, atol=1e-5)
        assert a.graph.nprobe == b.graph.nprobe
        assert np.array_equal(a.order, b.order) and a.uids == b.uids
    assert not list(workspace.glob(".poolsieve-spill-*"))  # the spill folders are cleaned up
    a = image_based_run(local, target="target", clusters=6, sample_ratio=0.5)
    b = image_based_run(ray_pool, target="target", clusters=6, sample_ratio=0.5)
    assert a["uids"] == b["uids"] and np.array_equal(a["centroids"], b["centroids"])


# ------------------------------------------------------------------------------ image-based
def test_image_based_matches_brute_force(workspace):
    pool = make_pool(workspace)
    res = image_based_run(pool, target="target", clusters=6, iterations=10, device="cpu")
    df = pool.read_columns(["text", "language"])
    emb = pool.load_embeddings(["b32_img"])["b32_img"].astype(np.float32)
    caption = (df["language"] == "en").to_numpy() & (df["text"].str.split().str.len() > 1).to_numpy() \
        & (df["text"].str.len() > 5).to_numpy()
    # k-means trains on exactly the caption-filtered rows, in the row order of seed 0
    ref_c = kmeans(emb[caption][row_order(df["uid"].to_numpy()[caption], 0)], 6, niter=10, seed=0,
                   device="cpu").centroids
    np.testing.assert_array_equal(res["centroids"], ref_c)
    target = np.load(workspace / "references" / "target.npz")["b32_img"].astype(np.float32)
    target_ids = np.unique((target @ ref_c.T).argmax(1))
    keep = caption & np.isin((emb @ ref_c.T).argmax(1), target_ids)
    expected = UidSet.from_hex(df["uid"].to_numpy()[keep])
    assert res["uids"] == expected
    assert 0 < len(expected) < caption.sum()
    again = get_filter("image_based")(pool, target=str(workspace / "references" / "target.npz"), clusters=6,
                                      iterations=10)
    assert again == expected


def test_image_based_sample_ratio_seeded_and_bad_input(workspace):
    pool = make_pool(workspace)
    a = image_based_run(pool, target="target", clusters=5, sample_ratio=0.5, seed=4)
    b = image_based_run(pool, target="target", clusters=5, sample_ratio=0.5, seed=4)
    assert a["uids"] == b["uids"] and np.array_equal(a["centroids"], b["centroids"])
    with pytest.raises(InputError, match="imagenet"):
        image_based_run(pool, clusters=5)
    with pytest.raises(ConfigError):
        get_filter("image_based")(pool, target="target", clusters=10_000)
    with pytest.raises(ConfigError):
        get_filter("image_based")(pool, target="target", sample_ratio=0)


# ---------------------------------------------------------------------------------- dedup
def test_exact_dedup_matches_reference(workspace):
    """Of rows with one sha256, the uid first in the row order (the smallest key, from its definition)."""
    pool = make_pool(workspace)
    df = pool.read_columns(["sha256"])
    groups: dict[str, list[str]] = {}
    for uid, sha in zip(df["uid"], df["sha256"], strict=True):
        groups.setdefault(sha if sha else f"none-{uid}", []).append(uid)
    kept = [min(uids, key=lambda u: (order_key(u, 0), u)) for sha, uids in groups.items() if not sha.startswith("none")]
    kept += [uids[0] for sha, uids in groups.items() if sha.startswith("none")]
    expected = UidSet.from_hex(kept)
    got = get_filter("dedup")(pool)
    assert got == expected
    assert len(got) == len(df) - 3 - 2 - 2  # sha twins (3), cross-shard sha (2), repeated uid (2)
    assert get_filter("dedup")(pool, by=["sha256"]) == got
    only_uid = get_filter("dedup")(pool, by=["uid"])
    assert len(only_uid) == len(np.unique(pool.uid_keys()))
    with pytest.raises(ConfigError):
        get_filter("dedup")(pool, by=["url"])
    with pytest.raises(ConfigError):
        get_filter("dedup")(pool, eps=0.1)


def brute_semdedup(x, labels, centroids, eps, order, against, place):
    """``place``: each row's place in the row order (equal ranking keys: the earlier place)."""
    xn = unit(x.astype(np.float64))
    cn = unit(centroids.astype(np.float64))
    keep = np.zeros(len(x), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        cos = xn[rows] @ cn[c]
        rank = rows[np.lexsort((place[rows], cos if order == "hard" else -cos))]
        sims = xn[rank] @ xn[rank].T
        kept_pos = []
        for i in range(len(rank)):
            earlier = kept_pos if against == "kept" else list(range(i))
            if not earlier or sims[i, earlier].max() <= 1 - eps:
                kept_pos.append(i)
                keep[rank[i]] = True
    return keep


@pytest.mark.parametrize(("order", "against"), [("hard", "kept"), ("easy", "any")])
def test_semdedup_matches_brute_force(workspace, order, against):
    pool = make_pool(workspace)
    res = semdedup_run(pool, eps=0.15, clusters=4, order=order, against=against, device="cpu")
    x = pool.load_embeddings(["b32_img"])["b32_img"]
    labels = ((x.astype(np.float32)[:, None, :] - res["centroids"][None]) ** 2).sum(-1).argmin(1)
    expected = brute_semdedup(x, labels, res["centroids"], 0.15, order, against, np.argsort(pool_order(pool, 0)))
    assert res["uids"] == UidSet(pool.uid_keys()[expected])
    assert 0 < (~expected).sum() < len(x) // 2 and res["removed"] == (~expected).sum()
    via_dedup = get_filter("dedup")(pool, method="semantic", eps=0.15, clusters=4, order=order, against=against)
    assert via_dedup == res["uids"]


def test_semdedup_drops_the_planted_duplicate_only_once(workspace):
    pool = make_pool(workspace)
    res = semdedup_run(pool, eps=1e-3, clusters=3)
    uids = pool.read_columns([])["uid"].to_numpy()
    twins = uids[[3 - 1, 5 - 1]]  # rows 3 and 5 of shard 0 (row 2 failed)
    assert sum(u in res["uids"] for u in twins) == 1


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU")
def test_gpu_and_cpu_agree(workspace):
    pool = make_pool(workspace)
    rows = np.arange(497)
    a = d2_select(pool, {"fraction": 0.3, "knn": "exact", "device": "cpu"}, graph_rows=rows)
    b = d2_select(pool, {"fraction": 0.3, "knn": "exact", "device": "cuda"}, graph_rows=rows)
    assert np.array_equal(a.neighbors, b.neighbors)
    np.testing.assert_allclose(a.distances, b.distances, atol=1e-4)
    assert np.array_equal(a.order, b.order)
    ia = image_based_run(pool, target="target", clusters=6, device="cpu")
    ib = image_based_run(pool, target="target", clusters=6, device="cuda")
    np.testing.assert_allclose(ia["centroids"], ib["centroids"], atol=1e-4)
    assert ia["uids"] == ib["uids"]
    sa = semdedup_run(pool, eps=0.15, clusters=4, device="cpu")
    sb = semdedup_run(pool, eps=0.15, clusters=4, device="cuda")
    assert sa["uids"] == sb["uids"]


def _faiss_gpu() -> bool:
    from poolsieve.core.devices import cuda_available
    from poolsieve.filters._device import faiss_gpu_available

    return cuda_available() and faiss_gpu_available()


@pytest.mark.skipif(not _faiss_gpu(), reason="no GPU that faiss's GPU build sees")
def test_faiss_gpu_and_cpu_agree(workspace):
    pool = make_pool(workspace)
    ivf = {"knn": "ivf", "nlist": 8, "nprobe": 8, "knn_impl": "faiss", "fraction": 0.3}
    rows = np.arange(497)
    a = d2_select(pool, {**ivf, "device": "cpu"}, graph_rows=rows)
    b = d2_select(pool, {**ivf, "device": "cuda"}, graph_rows=rows)
    assert b.graph.impl == "faiss"
    np.testing.assert_allclose(a.distances, b.distances, atol=1e-4)
    assert (a.neighbors == b.neighbors).all(axis=1).mean() > 0.99  # float ties may swap
    x = pool.load_embeddings(["b32_img"])["b32_img"].astype(np.float32)
    ca, cb = (kmeans(x, 6, niter=10, seed=0, device=d).centroids for d in ("cpu", "cuda"))
    np.testing.assert_allclose(ca, cb, atol=1e-4)


def test_filters_run_through_the_spec_call_with_reports(workspace):
    from poolsieve.filters.algebra import call_filter

    pool = make_pool(workspace)
    details: dict = {}
    keys = call_filter(pool, "d2_pruning", {"fraction": 0.2, "knn": "exact"}, details)
    assert len(keys) == int(0.2 * 497) and details["knn"] == "exact" and details["selected"] == len(keys)
    details = {}
    call_filter(pool, "image_based", {"target": "target", "clusters": 5}, details)
    assert details["clusters"] == 5 and 1 <= details["target_clusters"] <= 5
    with pytest.raises(ConfigError):
        call_filter(pool, "d2_pruning", {"nprobes": 3}, {})
