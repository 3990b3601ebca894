"""nprobe's calibration: the recall it requires is a lower confidence bound, not the sample's own."""

import numpy as np
import pytest

from poolsieve.core.errors import PoolsieveWarning
from poolsieve.filters.knn.graph import choose_nprobe, recall_at_k, recall_bound


def _neighbours(rows: int, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ids ``0..4`` per row, and approximate ids finding ``found[r]`` of them (misses are ids 100+)."""
    exact = np.tile(np.arange(5), (rows, 1))
    approx = np.where(np.arange(5)[None, :] < found[:, None], exact, 100 + np.arange(5)[None, :])
    return approx, exact


def test_bound_is_the_ratio_estimators_one_sided_interval():
    found = np.array([5] * 90 + [3] * 6 + [0] * 4)  # 468 of 500 slots
    approx, exact = _neighbours(100, found)
    recall, bound = recall_bound(approx, exact, n=10**6)
    assert recall == pytest.approx(468 / 500) == recall_at_k(approx, exact)
    resid = found - recall * 5
    se = np.sqrt((1 - 100 / 10**6) * resid.var(ddof=1) / 100) / 5
    assert bound == pytest.approx(recall - 1.645 * se)
    assert 0.88 < bound < recall - 0.02  # rows, not slots, are the sample: misses come a row at a time


def test_bound_is_the_recall_when_every_row_is_calibrated():
    approx, exact = _neighbours(100, np.array([5] * 90 + [0] * 10))
    assert recall_bound(approx, exact, n=100) == (0.9, 0.9)
    assert recall_bound(approx[:1], exact[:1], n=10**6) == (1.0, 1.0)  # one row: no spread to measure


def test_choose_nprobe_probes_on_while_the_bound_misses_the_target():
    rows = 400
    exact = np.tile(np.arange(5), (rows, 1))
    found = {1: np.array([5] * 384 + [0] * 16), 2: np.array([5] * 396 + [0] * 4), 4: np.full(rows, 5)}
    searched = []

    def search(nprobe: int, m1: int) -> np.ndarray:
        searched.append(nprobe)
        return _neighbours(rows, found[nprobe])[0]

    # 0.96 on the sample, but its bound on a pool of 1M rows is under 0.95: one more doubling
    assert choose_nprobe(search, exact, 64, 0.95, 10, False, 10**6) == (2, 10, 0.99)
    assert searched == [1, 2]
    # the sample is the whole pool: 0.96 is the pool's recall
    assert choose_nprobe(search, exact, 64, 0.95, 10, False, rows) == (1, 10, 0.96)


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_exact_search_cut_over_cores_gives_the_same_neighbours_and_bits(monkeypatch, cores):
    """The calibration's exact search cuts each block of base rows into a piece per core: the same ids and
    the same distances as one GEMM per block, and the brute-force neighbours (ties by id)."""
    from poolsieve.filters.knn import exact as knn_exact

    rng = np.random.default_rng(3)
    base = np.repeat(rng.standard_normal((150, 24)), 2, axis=0).astype(np.float16)  # ties: every row twice
    ids = rng.permutation(len(base)).astype(np.int64)
    queries = rng.standard_normal((40, 24)).astype(np.float16)
    monkeypatch.setattr(knn_exact, "EXACT_ROWS", 64)  # several blocks
    monkeypatch.setattr(knn_exact, "PAIRS_HELD", 24 * 7)  # admitted pairs computed 7 at a time
    monkeypatch.setattr(knn_exact.os, "cpu_count", lambda: 1)
    one_d, one_i = knn_exact.exact_topk(base, ids, queries, 5)
    monkeypatch.setattr(knn_exact.os, "cpu_count", lambda: cores)
    d, i = knn_exact.exact_topk(base, ids, queries, 5)
    assert np.array_equal(i, one_i)
    assert np.array_equal(d.view(np.uint32), one_d.view(np.uint32))
    brute = ((queries.astype(np.float32)[:, None, :] - base.astype(np.float32)[None]) ** 2).sum(-1)
    want = np.lexsort((np.broadcast_to(ids, brute.shape), np.round(brute, 3)), axis=1)[:, :5]
    assert np.array_equal(i, ids[want])


def test_choose_nprobe_searches_every_list_only_when_no_probe_reaches_the_target():
    """Candidates grow only when every list probed falls short; a reachable target never pays for the
    search of every list (at 4M rows, 8,000 lists, that search held 1.4 GiB)."""
    rows, nlist = 300, 16
    exact = np.tile(np.arange(5), (rows, 1))
    searched = []

    def search(nprobe: int, m1: int) -> np.ndarray:
        searched.append((nprobe, m1))
        hit = m1 >= 20 and nprobe >= 4  # 10 candidates per part never reach the target
        return _neighbours(rows, np.full(rows, 5 if hit else 4))[0]

    assert choose_nprobe(search, exact, nlist, 0.95, 10, True, rows) == (4, 20, 1.0)
    assert searched == [(1, 10), (2, 10), (4, 10), (8, 10), (16, 10), (1, 20), (2, 20), (4, 20)]
    searched.clear()
    assert choose_nprobe(lambda p, m: search(p, 20), exact, nlist, 0.95, 20, True, rows) == (4, 20, 1.0)
    assert searched == [(1, 20), (2, 20), (4, 20)]  # never all 16 lists
    with pytest.warns(PoolsieveWarning, match="below the target"):
        assert choose_nprobe(search, exact, nlist, 0.95, 10, False, rows) == (16, 10, 0.8)


def test_ivf_search_holds_at_most_pairs_candidates_even_probing_every_list(monkeypatch):
    """A search whose probes times candidates exceed ``pairs`` for one query takes one query at a time
    (no floor of 256 queries): the same rows as in one chunk."""
    from poolsieve.filters.knn import index as knn_index
    from poolsieve.filters.knn.index import index_from_labels

    rng = np.random.default_rng(8)
    base = rng.standard_normal((400, 16)).astype(np.float32)
    index = index_from_labels(base, rng.standard_normal((16, 16)).astype(np.float32), rng.integers(0, 16, 400))
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    whole = index.search(queries, 10, nprobe=16)
    chunks = []
    real = knn_index.IvfIndex._search_chunk
    monkeypatch.setattr(knn_index.IvfIndex, "_search_chunk",
                        lambda self, q, *a: chunks.append(len(q)) or real(self, q, *a))
    small = index.search(queries, 10, nprobe=16, pairs=100)  # 16 lists x 10 candidates > 100
    assert chunks == [1] * 30
    assert np.array_equal(small[1], whole[1])  # the same rows; their GEMM distances within rounding
    np.testing.assert_allclose(small[0], whole[0], rtol=1e-5)


def _brute(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's ``pair_distances``, the ``k`` smallest by (distance, id)."""
    from poolsieve.filters.knn import index as knn_index

    q = queries.astype(np.float32)
    d = knn_index.pair_distances(q, np.broadcast_to(base.astype(np.float32), (len(q), *base.shape)))
    order = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), ids[order]


def test_exact_search_admits_every_row_its_gemm_misjudges(monkeypatch):
    """Rows far from the origin and close to each other: the GEMM's ``|q|^2 + |v|^2 - 2 q.v`` loses most
    of its digits, so a row admitted by its GEMM distance alone (without ``gemm_margin``) is often not
    the nearest by ``pair_distances``. The search still gives the brute force's ids and bits, with or
    without a bound from another table's search."""
    from poolsieve.filters.knn import exact as knn_exact

    rng = np.random.default_rng(8)
    offset = rng.standard_normal(64) * 40
    base = (offset + rng.standard_normal((2000, 64)) * 0.03).astype(np.float16)
    base[1500:1600] = base[:100]  # exact duplicates: equal distances, decided by id
    queries = (offset + rng.standard_normal((60, 64)) * 0.03).astype(np.float16)
    ids = rng.permutation(len(base)).astype(np.int64)
    monkeypatch.setattr(knn_exact, "EXACT_ROWS", 256)
    want_d, want_i = _brute(base, ids, queries, 5)
    d, i = knn_exact.exact_topk(base, ids, queries, 5)
    assert np.array_equal(i, want_i)
    assert np.array_equal(d.view(np.uint32), want_d.view(np.uint32))
    # as the calibration searches a pool: the first table's 5th nearest bound the other tables
    first = knn_exact.exact_topk(base[:300], ids[:300], queries, 5)
    rest = knn_exact.exact_topk(base[300:], ids[300:], queries, 5, bound=first[0][:, 4])
    from poolsieve.filters._topk import sorted_topk

    d, i = sorted_topk(np.concatenate([first[0], rest[0]], axis=1), np.concatenate([first[1], rest[1]], axis=1), 5)
    assert np.array_equal(i, want_i)
    assert np.array_equal(d.view(np.uint32), want_d.view(np.uint32))
    # the GEMM's rounding matters here: the rows it ranks among the 5 nearest are not the 5 nearest
    q32, b32 = queries.astype(np.float32), base.astype(np.float32)
    gemm = (q32**2).sum(1)[:, None] + (b32**2).sum(1)[None, :] - 2 * q32 @ b32.T
    by_gemm = ids[np.argsort(gemm, axis=1, kind="stable")[:, :5]]
    assert not np.array_equal(np.sort(by_gemm, 1), np.sort(want_i, 1))


def test_admission_limit_is_at_least_the_bound_plus_its_margin():
    from poolsieve.filters.knn.exact import admission_limit, gemm_margin

    q_norm = np.array([0.0, 1.0, 30.0, 1.0, 1.0])
    bound = np.array([0.0, 0.5, 2.0, np.inf, np.nan])
    limit = admission_limit(bound, q_norm, 1536)
    assert np.all(limit[:3] >= bound[:3] + gemm_margin(q_norm[:3], bound[:3], 1536))
    assert np.all(limit[:3] < 1.01 * bound[:3] + 0.02 * q_norm[:3] ** 2 + 1e-6)  # and not every row
    assert np.isinf(limit[3:]).all()  # no finite bound: every row is admitted
