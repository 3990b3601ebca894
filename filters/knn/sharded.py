"""The kNN graph built shard by shard with Ray (``pool.map``), the same graph as ``graph.knn_graph``.

The driver trains the IVF lists on a seeded sample gathered from the workers; workers assign their
tables' rows to lists. The indexes are then written once to a folder beside the score tables: ``gemm``
as ``.npy`` files the workers fill in and memory-map, ``faiss`` as one ``faiss.write_index`` file per part
(rows added by the driver, table by table) that workers read with ``IO_FLAG_MMAP``. ``nprobe`` is
calibrated in the driver against an exact search done table by table on workers. Each search task takes
a run of consecutive tables; rows are gathered in shard order. Ray workers are separate processes, so
faiss's OpenMP threads are never inherited through a fork.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from poolsieve.core.devices import resolve_device, task_resources
from poolsieve.core.progress import Progress

from .faiss_index import FaissIvf
from .graph import (
    KnnGraph,
    _pad,
    candidates_per_part,
    check_knn_params,
    choose_nprobe,
    part_slices,
    remove_self,
    resolve_impl,
    search_parts,
    use_exact,
)
from .index import IvfIndex, flat_index, inverse, sorted_topk, sq_norms
from .lists import calibration_rows, coarse_probes, default_nlist, train_lists, training_rows

SEARCH_TASK_ROWS = 131072  # rows one sharded search task takes on (whole tables)


def sharded_knn_graph(pool, load_features: Callable[[Path], np.ndarray], row_counts: Sequence[int], k: int, *,
                      parts: Sequence[int] | None = None, candidates: int | None = None, method: str = "auto",
                      exact_max_rows: int = 50_000, nlist: int | None = None, nprobe: int | None = None,
                      recall: float = 0.95, seed: int = 0, device: str = "auto", calibration_queries: int = 500,
                      work_dir: Path | None = None, impl: str = "auto") -> KnnGraph:
    """``knn_graph`` over a ScoredPool's tables with ``pool.map`` (Ray tasks), the same result.

    ``load_features(table)`` returns that table's rows (successful samples, in order); ``row_counts``
    their numbers. The indexes go to ``work_dir`` (default: a hidden folder beside the score tables,
    removed at the end); workers memory-map them, so no process holds the whole pool.
    """
    tables = list(pool.tables)
    starts = np.concatenate([[0], np.cumsum(row_counts)]).astype(np.int64)
    n = int(starts[-1])
    check_knn_params(n, k, method, recall)
    device = resolve_device(device)
    impl = resolve_impl(impl, device)
    kk = min(k, n - 1)
    exact = use_exact(n, method, exact_max_rows)
    use_faiss = impl == "faiss" and not exact
    dim = int(sum(parts)) if parts else int(load_features(Path(tables[0])).shape[1])
    slices = [slice(0, dim)] if exact else part_slices(dim, parts)
    m1 = min(n, candidates_per_part(kk, len(slices), candidates))
    folder = work_dir or (Path(tables[0]).parent / f".knn-index-{uuid.uuid4().hex[:12]}")
    folder.mkdir(parents=True, exist_ok=True)
    starts_by_table = dict(zip(map(str, tables), starts[:-1].tolist(), strict=True))
    try:
        if exact:
            nlist = 1
            labels = np.zeros((n, 1), dtype=np.int64)
            all_centroids = [np.zeros((1, dim), np.float32)]
        else:
            nlist = nlist or default_nlist(n)
            sample = _gather_rows(pool, load_features, starts, training_rows(n, nlist, seed))
            all_centroids = [train_lists(np.ascontiguousarray(sample[:, sl]), nlist, seed, device) for sl in slices]
            np.save(folder / "centroids.npy", np.stack(all_centroids))
            labels = np.concatenate(pool.map(_AssignLists(load_features, folder, slices, device),
                                             "IVF assign (shards)", **task_resources(device)))
        if use_faiss:
            _write_faiss_indexes(folder, tables, load_features, starts, slices, all_centroids, labels)
        else:
            for j, sl in enumerate(slices):
                _write_index_files(folder / f"part{j}", n, sl.stop - sl.start, all_centroids[j], labels[:, j])
            pool.map(_WriteVectors(load_features, folder, slices, starts_by_table), "write index")
        indexes = load_indexes(folder, len(slices), use_faiss)
        measured = None
        if not exact and nprobe is None:
            cal = calibration_rows(n, calibration_queries, seed)
            queries = _gather_rows(pool, load_features, starts, cal)
            exact_ids = remove_self(*sharded_exact_search(pool, load_features, starts, queries, kk + 1, device), cal)[1]

            def calibration_search(p: int, m: int) -> np.ndarray:
                return remove_self(*search_parts(queries, indexes, slices, kk + 1, m, p, device), cal)[1]

            nprobe, m1, measured = choose_nprobe(calibration_search, exact_ids, nlist, recall, m1,
                                                 len(slices) > 1 and candidates is None, n)
        probe = 1 if exact else int(nprobe)
        search = _SearchTables(load_features, folder, slices, starts_by_table, kk + 1, m1, probe, device, use_faiss)
        parts_out = pool.runtime.map(search, table_groups(tables, row_counts, SEARCH_TASK_ROWS),
                                     f"kNN search (k={k}, nprobe={probe})", items=lambda r: len(r[0]),
                                     item_unit="rows", **task_resources(device))
        dist = np.concatenate([p[0] for p in parts_out])
        ids = np.concatenate([p[1] for p in parts_out])
        return KnnGraph(*_pad(ids, dist, k), method="exact" if exact else "ivf", nlist=nlist, nprobe=probe,
                        calibrated_recall=measured, candidates=m1 - 1 if len(slices) > 1 else None, impl=impl)
    finally:
        if work_dir is None:
            shutil.rmtree(folder, ignore_errors=True)


def sharded_exact_search(pool, load_features, starts: np.ndarray, queries: np.ndarray, k: int,
                         device: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest pool rows of ``queries``: each worker searches one table, results merged."""
    parts = pool.map(_ExactAgainstTable(load_features, queries, k, device,
                                        dict(zip(map(str, pool.tables), starts[:-1].tolist(), strict=True))),
                     "exact kNN (calibration)", **task_resources(device))
    return sorted_topk(np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1), k)


def table_groups(tables: Sequence[Path], row_counts: Sequence[int], min_rows: int) -> list[list[Path]]:
    """Consecutive tables grouped into search tasks of at least ``min_rows`` rows (the last may hold fewer).

    A task converts every index list it probes to float32 once; many queries per task amortise that.
    """
    groups: list[list[Path]] = [[]]
    rows = 0
    for table, count in zip(tables, row_counts, strict=True):
        if rows >= min_rows:
            groups.append([])
            rows = 0
        groups[-1].append(table)
        rows += int(count)
    return [g for g in groups if g]


def _gather_rows(pool, load_features, starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted global ids) of the pool's features, fetched table by table on workers."""
    per_table = [rows[(rows >= a) & (rows < b)] - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    wanted = dict(zip(map(str, pool.tables), per_table, strict=True))
    parts = pool.map(_TakeRows(load_features, wanted), "gather rows")
    return np.concatenate(parts)


def _write_index_files(folder: Path, n: int, dim: int, centroids: np.ndarray, labels: np.ndarray) -> None:
    """One part's index folder, vectors still empty (workers fill them in, see ``_WriteVectors``)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.argsort(labels, kind="stable")
    np.save(folder / "centroids.npy", centroids.astype(np.float32))
    np.save(folder / "offsets.npy", np.searchsorted(labels[order], np.arange(len(centroids) + 1)).astype(np.int64))
    np.save(folder / "ids.npy", order.astype(np.int64))
    np.save(folder / "positions.npy", inverse(order))
    np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(n, dim)).flush()
    np.lib.format.open_memmap(folder / "sq_norms.npy", mode="w+", dtype=np.float32, shape=(n,)).flush()


def load_indexes(folder: Path, n_parts: int, use_faiss: bool) -> list[IvfIndex | FaissIvf]:
    """The parts' indexes in ``folder``, memory-mapped."""
    if use_faiss:
        return [FaissIvf.load(folder / f"part{j}.faiss") for j in range(n_parts)]
    return [IvfIndex.load(folder / f"part{j}") for j in range(n_parts)]


def _write_faiss_indexes(folder: Path, tables, load_features, starts: np.ndarray, slices: list[slice],
                         centroids: list[np.ndarray], labels: np.ndarray) -> None:
    """One faiss index file per part, rows added table by table in shard order (ids = global rows)."""
    indexes = [FaissIvf.empty(c) for c in centroids]
    progress = Progress("write faiss index", total=len(tables), unit="tables")
    for t, table in enumerate(tables):
        x = load_features(Path(table))
        for j, sl in enumerate(slices):
            indexes[j].add(x[:, sl], labels[starts[t]:starts[t + 1], j])
        progress.update(1)
    for j, index in enumerate(indexes):
        index.save(folder / f"part{j}.faiss")


def _TakeRows(load_features, wanted: dict[str, np.ndarray]):  # noqa: N802 - task factories read as nouns
    def take_rows(table: Path) -> np.ndarray:
        return np.asarray(load_features(table)[wanted[str(table)]])

    return take_rows


def _AssignLists(load_features, folder: Path, slices: list[slice], device: str):  # noqa: N802
    def assign_lists(table: Path) -> np.ndarray:
        centroids = np.load(folder / "centroids.npy")
        x = load_features(table)
        return np.stack([coarse_probes(x[:, sl], c, 1, device)[:, 0] for sl, c in zip(slices, centroids, strict=True)],
                        axis=1)

    return assign_lists


def _WriteVectors(load_features, folder: Path, slices: list[slice], starts: dict[str, int]):  # noqa: N802
    def write_vectors(table: Path) -> int:
        x = np.asarray(load_features(table), dtype=np.float16)
        start = starts[str(table)]
        for j, sl in enumerate(slices):
            part = folder / f"part{j}"
            pos = np.load(part / "positions.npy", mmap_mode="r")[start:start + len(x)]
            vectors = np.load(part / "vectors.npy", mmap_mode="r+")
            norms = np.load(part / "sq_norms.npy", mmap_mode="r+")
            vectors[pos] = x[:, sl]
            norms[pos] = sq_norms(x[:, sl])
            vectors.flush()
            norms.flush()
        return len(x)

    return write_vectors


def _ExactAgainstTable(load_features, queries: np.ndarray, k: int, device: str, starts: dict[str, int]):  # noqa: N802
    def exact_against_table(table: Path) -> tuple[np.ndarray, np.ndarray]:
        d, i = flat_index(load_features(table)).search(queries, k, 1, device)
        return d, np.where(i >= 0, i + starts[str(table)], -1)

    return exact_against_table


def _SearchTables(load_features, folder: Path, slices: list[slice], starts: dict[str, int], k1: int, m1: int,  # noqa: N802
                  nprobe: int, device: str, use_faiss: bool):
    def search_tables(tables: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        parts = [load_features(t) for t in tables]
        x = np.concatenate(parts)
        query_ids = np.concatenate([starts[str(t)] + np.arange(len(p), dtype=np.int64)
                                    for t, p in zip(tables, parts, strict=True)])
        indexes = load_indexes(folder, len(slices), use_faiss)
        d, i = search_parts(x, indexes, slices, k1, m1, nprobe, device)
        return remove_self(d, i, query_ids)

    return search_tables
