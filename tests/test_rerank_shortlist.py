"""D2's re-rank with the search's GEMM distances (``graph._shortlist``): only the candidates that can reach
the ``k`` nearest get their exact distance, and the result is the full re-rank's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from poolsieve.filters.knn import graph
from poolsieve.filters.knn.index import index_from_labels


def pool(n: int, widths: tuple[int, ...], dtype, seed: int = 0) -> np.ndarray:
    """Rows near a few topic centres (so that candidates crowd together), with exact copies of rows."""
    rng = np.random.default_rng(seed)
    dim = sum(widths)
    centres = rng.standard_normal((8, dim)).astype(np.float32)
    x = centres[rng.integers(0, 8, n)] + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    copies = rng.choice(n, n // 10, replace=False)
    x[copies] = x[rng.integers(0, n, len(copies))]  # ties: equal distances, decided by id
    return x.astype(dtype)


def searched(x: np.ndarray, widths: tuple[int, ...], m1: int, nlist: int = 16, seed: int = 0):
    """Each part's IVF index (random lists) and its candidates with their GEMM distances, as ``search_parts``
    has them before the re-rank."""
    rng = np.random.default_rng(seed)
    ends = np.cumsum(widths)
    slices = [slice(e - w, e) for w, e in zip(widths, ends, strict=True)]
    indexes, cand_d, cand_i = [], [], []
    for sl in slices:
        part = x[:, sl]
        index = index_from_labels(part, np.zeros((nlist, sl.stop - sl.start), np.float32), rng.integers(0, nlist, len(x)))
        probes = np.stack([rng.permutation(nlist)[:4] for _ in range(len(x))])
        d, i = index.search(part, m1, 4, "cpu", probes=probes)
        indexes.append(index)
        cand_d.append(d)
        cand_i.append(i)
    return indexes, slices, cand_d, cand_i


@pytest.mark.parametrize("widths,dtype", [((48, 48), np.float16), ((64,), np.float32), ((32, 16, 16), np.float16)])
@pytest.mark.parametrize("block", [1, 16, 100])
def test_shortlist_gives_the_full_rerank_bit_for_bit(widths, dtype, block, monkeypatch):
    x = pool(600, widths, dtype)
    indexes, slices, cand_d, cand_i = searched(x, widths, m1=9)
    monkeypatch.setattr(graph, "RERANK_BLOCK", block)
    full_d, full_i = graph.rerank(x, indexes, slices, cand_i, 6)
    short_d, short_i = graph.rerank(x, indexes, slices, cand_i, 6, cand_d=cand_d)
    assert np.array_equal(full_i, short_i)
    assert np.array_equal(full_d.view(np.uint32), short_d.view(np.uint32))
    assert (full_i >= 0).all() and len(np.unique(full_i[:, 0])) > 1


def test_shortlist_computes_far_fewer_exact_distances(monkeypatch):
    x = pool(600, (48, 48), np.float16)
    indexes, slices, cand_d, cand_i = searched(x, (48, 48), m1=21)
    exact_rows = []
    real = graph.pair_distances

    def counting(q, v):
        exact_rows.append(v.shape[0] * v.shape[1])
        return real(q, v)

    monkeypatch.setattr(graph, "pair_distances", counting)
    graph.rerank(x, indexes, slices, cand_i, 6, cand_d=cand_d)
    shortlisted = sum(exact_rows)
    exact_rows.clear()
    graph.rerank(x, indexes, slices, cand_i, 6)
    full = sum(exact_rows)
    # the full re-rank computes 2 parts x 42 columns per query; the shortlist the other part's 42 and a few
    assert shortlisted < 0.7 * full, (shortlisted, full)


def test_gemm_distances_off_by_their_bound_change_nothing_and_far_beyond_it_do():
    """The shortlist trusts the GEMM only within ``_gemm_margin`` (twice the rounding bound): own distances
    moved by the whole bound, either way, give the same result; moved far beyond it (a control, so that
    the test can fail) they change it."""
    x = pool(400, (48, 48), np.float16)
    indexes, slices, cand_d, cand_i = searched(x, (48, 48), m1=9)
    full = graph.rerank(x, indexes, slices, cand_i, 6)
    bounds = [graph._gemm_margin(x[:, sl], d) / 2 for sl, d in zip(slices, cand_d, strict=True)]
    for sign in (1, -1):
        moved = [d + sign * b for d, b in zip(cand_d, bounds, strict=True)]
        short = graph.rerank(x, indexes, slices, cand_i, 6, cand_d=moved)
        assert np.array_equal(full[1], short[1]) and np.array_equal(full[0], short[0])
    far = [d + np.float32(0.1) * np.abs(d) for d in cand_d]
    assert not np.array_equal(full[1], graph.rerank(x, indexes, slices, cand_i, 6, cand_d=far)[1])


def test_inf_and_nan_vectors_are_ranked_as_by_the_full_rerank():
    x = pool(300, (32, 32), np.float32)
    x[5, 3] = np.inf
    x[7, 40] = np.nan
    indexes, slices, cand_d, cand_i = searched(x, (32, 32), m1=9)
    full = graph.rerank(x, indexes, slices, cand_i, 6)
    short = graph.rerank(x, indexes, slices, cand_i, 6, cand_d=cand_d)
    assert np.array_equal(full[1], short[1])
    assert np.array_equal(full[0], short[0], equal_nan=True)


@pytest.mark.parametrize("scan_rows,density,scan_queries",
                         [(64, 8, 128), (64, 0, 128), (64, 10**6, 128), (10**6, 8, 128), (64, 10**6, 4)])
def test_indexes_read_from_disk_give_the_in_memory_result(tmp_path, monkeypatch, scan_rows, density, scan_queries):
    """From disk the pairs are read in file order, chunk by chunk (whole chunks or row by row): the same
    bits as the in-memory re-rank of every candidate."""
    from poolsieve.filters.knn import index as knn_index
    from poolsieve.filters.knn.index import IvfIndex

    x = pool(500, (48, 48), np.float16)
    indexes, slices, cand_d, cand_i = searched(x, (48, 48), m1=9)
    full = graph.rerank(x, indexes, slices, cand_i, 6)
    for j, index in enumerate(indexes):
        index.save(tmp_path / f"part{j}")
    loaded = [IvfIndex.load(tmp_path / f"part{j}", on_disk=True) for j in range(len(indexes))]
    assert all(index.on_disk for index in loaded)
    monkeypatch.setattr(knn_index, "SCAN_ROWS", scan_rows)
    monkeypatch.setattr(knn_index, "SCAN_DENSITY", density)
    monkeypatch.setattr(graph, "SCAN_QUERIES", scan_queries)  # several blocks of queries (4: sparse chunks)
    casts = []
    real_touched = knn_index._touched_rows
    monkeypatch.setattr(knn_index, "_touched_rows",
                        lambda block, local: casts.append(len(real_touched(block, local)[0]) < len(block))
                        or real_touched(block, local))
    read = []
    real_rows, real_take = knn_index.DiskArray.rows, knn_index.DiskArray.take
    monkeypatch.setattr(knn_index.DiskArray, "rows",
                        lambda self, lo, hi: read.append(("chunk", self.path.stem)) or real_rows(self, lo, hi))
    monkeypatch.setattr(knn_index.DiskArray, "take", lambda self, i: read.append(("rows", self.path.stem)) or real_take(self, i))
    disk = graph.rerank(x, loaded, slices, cand_i, 6, cand_d=cand_d)
    assert np.array_equal(full[1], disk[1])
    assert np.array_equal(full[0].view(np.uint32), disk[0].view(np.uint32))
    vector_reads = {how for how, name in read if name == "vectors"}
    if density == 0 or scan_rows == 10**6:
        assert vector_reads == {"rows"}  # never dense enough: row by row
    elif density == 10**6:
        assert vector_reads == {"chunk"}  # always whole chunks
        # 128 queries ask for most rows of some chunks (cast whole); 4 for a few (only those cast)
        assert not all(casts) if scan_queries == 128 else any(casts)
    else:
        assert "chunk" in vector_reads  # 9 candidates per query, 128 queries: dense in 64-row chunks


def test_touched_rows_casts_only_the_rows_asked_for_when_few_are():
    """A chunk read whole from disk: its asked-for rows cast to float32 (all of them when most are asked),
    each position mapped to its row's cast, the same bits as casting the whole chunk."""
    from poolsieve.filters.knn.index import _touched_rows

    block = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float16)
    for local in (np.array([3, 3, 7, 40, 40, 40, 63]), np.arange(64).repeat(2), np.array([], dtype=np.int64)):
        rows, at = _touched_rows(block, local)
        assert rows.dtype == np.float32 and len(rows) == (64 if len(set(local.tolist())) >= 32 else len(set(local.tolist())))
        assert np.array_equal(rows[at].view(np.uint32), block[local].astype(np.float32).view(np.uint32))
