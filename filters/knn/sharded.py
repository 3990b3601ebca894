"""The kNN graph of a pool built shard by shard in bounded memory: the graph ``graph.knn_graph`` builds
from an array, written to a spill folder instead of held in memory.

Rows are numbered in the pool's row order (``_row_order.rank_rows``: ranks by a seeded hash of the uid),
not in the order the tables store them: a row's id is its rank, the graph's files are indexed by it,
and every sample (IVF training, calibration) and every tie (equal distances: the lower id) follows it.
The graph is then the one ``graph.knn_graph`` builds from the rows sorted in that order, however the
pool is cut into tables.

Every step is a ``pool.runtime`` map over the tables (Ray tasks, each reading only its own tables'
embeddings, or one table after another in this process); what is per row goes to files in ``folder``:

0. order: every row's rank (``ranks.npy``, by pool row) and the pool row of every rank (``rows.npy``);
1. lists: the driver trains each part's IVF lists (``lists.train_lists``) on the seeded training rows
   (ids), gathered table by table in id order; a sample larger than half the memory budget is cut down
   to fit, with a one-line warning;
2. assign: a task per table writes its rows' nearest lists, ``PROBES_KEPT`` per part (``probes/``);
3. index: the driver walks the tables in order, counting list sizes, and hands each table the place its
   rows take in list order; a task per table writes them into each part's list-major index files
   (``part{j}/``: vectors, ids, squared norms, positions), which ``index.IvfIndex.load`` reads list by
   list from disk. With the in-process executor and an index small enough to be searched in memory,
   the same writes fill arrays in this process instead, which every task then searches: no files;
4. calibration: ``nprobe`` (unless given) is chosen in the driver as ``graph.knn_graph`` chooses it,
   against an exact search of the calibration rows done table by table by tasks (each computing the
   distances with its table's rows as the GEMM's query side, so that they do not change with the
   table's size; the first table's ``k``-th nearest bound the others', ``exact.exact_topk``);
5. search: tasks over runs of consecutive pool rows (at most ``search_rows`` each, from the budget, and at most
   a share of the pool per CPU of the cluster, so that more nodes hold less each) search
   the lists and write each row's neighbours (ids) to its id's row of ``neighbors.npy`` /
   ``distances.npy``. A task loads
   the index into memory when it takes at most ``INDEX_SHARE`` of the budget (the re-rank then reads
   candidates' vectors from memory), else reads lists and candidates from disk as it goes.

With ``knn_impl='faiss'`` the driver adds the rows to faiss's IVF index, which holds every row in memory
(3 KB per row at 1536-d): that path is for a GPU whose memory holds the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolsieve.core.devices import resolve_device, task_resources
from poolsieve.core.progress import Progress

from .._budget import fit_sample, rows_within, task_cpus
from .._embeddings import TableEmbeddings, gather_rows
from .._row_order import RANKS, ROWS, rank_rows
from .._spill import DiskArray, save
from .._topk import sorted_topk
from .exact import exact_topk
from .faiss_index import FaissIvf
from .graph import (
    candidates_per_part,
    check_knn_params,
    choose_nprobe,
    part_slices,
    remove_self,
    resolve_impl,
    search_parts,
    use_exact,
)
from .index import IvfIndex, sq_norms
from .lists import (
    CALIBRATION_ROWS,
    calibration_rows,
    coarse_probes,
    default_nlist,
    train_lists,
    training_rows,
)

PROBES_KEPT = 8  # nearest lists stored per row and part: calibrated nprobe up to this reuses them
QUERY_ROW_BYTES = 14_000  # working set of a search task per query row (queries, candidates, re-rank)
SAMPLE_SHARE = 0.5  # of the budget for the IVF training sample
INDEX_SHARE = 0.5  # of the budget: an index this small is loaded whole by each search task
INDEX_ROW_BYTES = 20  # ids, positions, squared norms per row and part, beside the fp16 vectors
ROW_ARRAYS = (("ids", np.int64), ("positions", np.int64), ("sq_norms", np.float32))  # an index's, beside vectors


@dataclass
class Segment:
    """Member rows ``lo:hi`` of table ``t`` (``table``), whose member row 0 is pool row ``start``."""

    table: Path
    t: int
    start: int
    lo: int
    hi: int


@dataclass
class GraphFiles:
    """A built graph: ``neighbors.npy`` (n, k) int64 and ``distances.npy`` (n, k) float32 in ``folder``,
    rows and neighbour ids in the row order (``ranks.npy`` / ``rows.npy`` map them to pool rows)."""

    folder: Path
    n: int
    k: int
    method: str
    nlist: int = 1
    nprobe: int = 1
    calibrated_recall: float | None = None
    candidates: int | None = None
    impl: str = "gemm"

    @property
    def neighbors(self) -> DiskArray:
        return DiskArray(self.folder / "neighbors.npy")

    @property
    def distances(self) -> DiskArray:
        return DiskArray(self.folder / "distances.npy")


def row_segments(tables: Sequence[Path], counts: Sequence[int], most: int) -> list[list[Segment]]:
    """Consecutive rows in units of at most ``most`` rows (a large table is split, small ones grouped)."""
    units: list[list[Segment]] = [[]]
    room, start = most, 0
    for t, (table, count) in enumerate(zip(tables, counts, strict=True)):
        lo = 0
        while lo < count:
            if room == 0:
                units.append([])
                room = most
            hi = min(count, lo + room)
            units[-1].append(Segment(Path(table), t, start, lo, hi))
            room -= hi - lo
            lo = hi
        start += int(count)
    return [u for u in units if u]


def search_rows(budget: int) -> int:
    """Query rows one search task holds at once under ``budget``."""
    return rows_within(budget, QUERY_ROW_BYTES, share=0.6, least=1024, most=262_144)


def build_graph(pool, names: Sequence[str], counts: Sequence[int], k: int, folder: Path, *,
                parts: Sequence[int] | None = None, candidates: int | None = None, method: str = "auto",
                exact_max_rows: int = 50_000, nlist: int | None = None, nprobe: int | None = None,
                recall: float = 0.95, seed: int = 0, device: str = "auto",
                calibration_queries: int = CALIBRATION_ROWS,
                impl: str = "auto") -> GraphFiles:
    """The pool's kNN graph over the embeddings ``names`` side by side, written to ``folder`` (with the row
    order of ``seed``, unless ``folder`` holds it already)."""
    tables = [Path(t) for t in pool.tables]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(starts[-1])
    check_knn_params(n, k, method, recall)
    if not (folder / RANKS).exists():
        rank_rows(pool, counts, seed, folder)
    device = resolve_device(device)
    kk = min(k, n - 1)
    exact = use_exact(n, method, exact_max_rows)
    dim = int(sum(parts))
    if impl == "auto" and n * dim * 2 > pool.budget:
        impl = "gemm"  # faiss's index would hold every row in memory
    impl = resolve_impl(impl, device)
    use_faiss = impl == "faiss" and not exact
    slices = [slice(0, dim)] if exact else part_slices(dim, parts)
    m1 = min(n, candidates_per_part(kk, len(slices), candidates))
    nlist = 1 if exact else (nlist or default_nlist(n))
    kept = 1 if exact else min(nlist, nprobe or PROBES_KEPT)
    plan = _Plan(tables, list(map(int, counts)), starts, list(names), slices, folder, device, kept)
    centroids = [np.zeros((1, dim), np.float32)] if exact else _train(pool, plan, nlist, seed)
    for j, c in enumerate(centroids):
        save(folder / f"centroids-{j}.npy", c.astype(np.float32))
    (folder / "probes").mkdir()
    totals = _assign(pool, plan, nlist, exact)
    index_bytes = n * (dim * 2 + INDEX_ROW_BYTES * len(slices))
    in_memory = not use_faiss and index_bytes <= pool.budget * INDEX_SHARE
    shared = in_memory and pool.runtime.executor == "local"  # every task runs in this process: no files
    if use_faiss:
        _write_faiss_indexes(plan, centroids)
    elif shared:
        indexes = _indexes_in_memory(pool, plan, centroids, totals)
    else:
        _write_indexes(pool, plan, centroids, totals)
    if not shared:
        indexes = load_indexes(folder, len(slices), use_faiss, in_memory)
    measured = None
    if not exact and nprobe is None:
        cal = calibration_rows(n, calibration_queries, seed)
        queries = _gather(pool, plan, plan.pool_rows(cal))
        exact_ids = remove_self(*exact_search(pool, plan, queries, kk + 1), cal)[1]
        probes = [coarse_probes(queries[:, sl], c, min(nlist, 32), device) for sl, c in zip(slices, centroids,
                                                                                                   strict=True)]

        def calibration_search(p: int, m: int) -> np.ndarray:
            return remove_self(*search_parts(queries, indexes, slices, kk + 1, m, p, device, probes,
                                             pairs=pool.budget // 128), cal)[1]

        nprobe, m1, measured = choose_nprobe(calibration_search, exact_ids, nlist, recall, m1,
                                             len(slices) > 1 and candidates is None, n)
    probe = 1 if exact else int(nprobe)
    DiskArray.create(folder / "neighbors.npy", (n, k), np.int64, fill=-1)
    DiskArray.create(folder / "distances.npy", (n, k), np.float32, fill=np.inf)
    if not shared:
        indexes.clear()  # the driver keeps no index while the tasks search
    room = pool.budget - index_bytes if in_memory else pool.budget
    spread = max(1024, -(-n // (2 * pool.runtime.cpus())))  # every CPU of a cluster gets units
    units = row_segments(tables, counts, min(search_rows(room), spread))
    pool.runtime.map(_SearchRows(plan, k, kk + 1, m1, probe, use_faiss, room, in_memory, indexes if shared else None),
                     units,
                     f"kNN search (k={k}, nprobe={probe})", items=lambda r: r, item_unit="rows",
                     num_cpus=task_cpus(pool), **task_resources(device))
    return GraphFiles(folder, n, k, "exact" if exact else "ivf", nlist, probe, measured,
                      m1 - 1 if len(slices) > 1 else None, impl)


@dataclass
class _Plan:
    """What the tasks of one graph build share (small: no per-row data)."""

    tables: list[Path]
    counts: list[int]
    starts: np.ndarray
    names: list[str]
    slices: list[slice]
    folder: Path
    device: str
    kept: int

    def probes_file(self, t: int) -> Path:
        return self.folder / "probes" / f"{t:06d}.npy"

    def reader(self, table: Path) -> TableEmbeddings:
        return TableEmbeddings(table, self.names)

    def ids(self, t: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The ids (ranks in the row order) of table ``t``'s member rows ``lo:hi``."""
        hi = self.counts[t] if hi is None else hi
        return DiskArray(self.folder / RANKS).rows(int(self.starts[t]) + lo, int(self.starts[t]) + hi)

    def pool_rows(self, ids: np.ndarray) -> np.ndarray:
        """The pool rows of ``ids``."""
        return DiskArray(self.folder / ROWS).take(ids)


def _train(pool, plan: _Plan, nlist: int, seed: int) -> list[np.ndarray]:
    """Each part's unit centroids, trained on the seeded sample (cut to fit ``SAMPLE_SHARE`` of the budget).

    Where each part is one embedding (image+text), the sample is gathered part by part straight into
    float32, so that only one part's sample is held at a time (4 bytes per value): a 2 GiB budget then
    holds 350k rows at 768-d, the 40 per list of 8,000 lists, against 175k with both parts in float16
    beside one in float32 (a sample cut to 22 per list left D2 needing 8x the probes at 4M rows)."""
    rows = training_rows(int(plan.starts[-1]), nlist, seed)
    widest = max(sl.stop - sl.start for sl in plan.slices)
    by_part = len(plan.names) == len(plan.slices) > 1
    row_bytes = 4 * widest if by_part else 2 * plan.slices[-1].stop + 4 * widest
    fit = rows_within(pool.budget, row_bytes, share=SAMPLE_SHARE, least=nlist)
    pool_rows = plan.pool_rows(fit_sample(rows, fit, seed, "D2's IVF lists", pool.budget))
    if not by_part:
        sample = _gather(pool, plan, pool_rows)
        return [train_lists(np.ascontiguousarray(sample[:, sl]), nlist, seed, plan.device) for sl in plan.slices]
    centroids = []
    for name, sl in zip(plan.names, plan.slices, strict=True):
        sample = gather_rows(pool, [name], plan.counts, pool_rows, dtype=np.float32)
        if sample.shape[1] != sl.stop - sl.start:
            raise ValueError(f"embedding {name} has {sample.shape[1]} columns, its part {sl.stop - sl.start}")
        centroids.append(train_lists(sample, nlist, seed, plan.device))
        del sample
    return centroids


def _gather(pool, plan: _Plan, rows: np.ndarray) -> np.ndarray:
    """Pool rows ``rows`` in that order."""
    return gather_rows(pool, plan.names, plan.counts, rows)


def _assign(pool, plan: _Plan, nlist: int, exact: bool) -> np.ndarray:
    """Write every table's nearest lists; return the list sizes per part, ``(parts, nlist)``."""
    totals = np.zeros((len(plan.slices), nlist), dtype=np.int64)
    progress = Progress("IVF assign", total=len(plan.tables), unit="tables")
    for _, counts in pool.runtime.stream(_assign_lists(plan, exact), list(enumerate(plan.tables)),
                                         **task_resources(plan.device)):
        totals += counts
        progress.update(1, int(counts[0].sum()), "rows")
    return totals


def _assign_lists(plan: _Plan, exact: bool):
    def assign_lists(unit: tuple[int, Path]) -> np.ndarray:
        t, table = unit
        centroids = [np.load(plan.folder / f"centroids-{j}.npy") for j in range(len(plan.slices))]
        reader = plan.reader(table)
        probes = np.zeros((len(reader), len(plan.slices), plan.kept), dtype=np.int32)
        for lo in range(0, len(reader), 65536):
            x = reader.rows(lo, lo + 65536)
            if not exact:
                for j, sl in enumerate(plan.slices):
                    probes[lo:lo + len(x), j] = coarse_probes(x[:, sl], centroids[j], plan.kept, plan.device)
        np.save(plan.probes_file(t), probes)
        return np.stack([np.bincount(probes[:, j, 0], minlength=len(centroids[j])) for j in range(len(plan.slices))])

    return assign_lists


def first_probes(plan: _Plan, t: int) -> np.ndarray:
    """Table ``t``'s rows' own lists, ``(rows, parts)``."""
    return np.ascontiguousarray(DiskArray(plan.probes_file(t)).rows(0, plan.counts[t])[:, :, 0], dtype=np.int64)


def _offsets(totals: np.ndarray) -> np.ndarray:
    """Each part's list offsets, ``(parts, nlist + 1)``, from its list sizes."""
    return np.concatenate([np.zeros((len(totals), 1), np.int64), np.cumsum(totals, axis=1)], axis=1)


def _write_indexes(pool, plan: _Plan, centroids: list[np.ndarray], totals: np.ndarray) -> None:
    """Each part's list-major index files, filled table by table by tasks."""
    n = int(plan.starts[-1])
    offsets = _offsets(totals)
    for j, sl in enumerate(plan.slices):
        part = plan.folder / f"part{j}"
        part.mkdir()
        save(part / "centroids.npy", centroids[j].astype(np.float32))
        save(part / "offsets.npy", offsets[j])
        DiskArray.create(part / "vectors.npy", (n, sl.stop - sl.start), np.float16)
        for name, dtype in ROW_ARRAYS:
            DiskArray.create(part / f"{name}.npy", (n,), dtype)
    _fill(pool, plan, offsets, lambda j, name: DiskArray(plan.folder / f"part{j}" / f"{name}.npy"), "write index")


class _InMemory:
    """An array written as a ``DiskArray`` is: ``write(index, values)``."""

    def __init__(self, shape: tuple[int, ...], dtype):
        self.array = np.empty(shape, dtype=dtype)

    def write(self, index: np.ndarray, values: np.ndarray) -> None:
        self.array[index] = values


def _indexes_in_memory(pool, plan: _Plan, centroids: list[np.ndarray], totals: np.ndarray) -> list[IvfIndex]:
    """Each part's index built in this process's memory, table by table (for the in-process executor,
    whose tasks all run here: the files ``_write_indexes`` writes would only be read back)."""
    n = int(plan.starts[-1])
    offsets = _offsets(totals)
    arrays = [{"vectors": _InMemory((n, sl.stop - sl.start), np.float16),
               **{name: _InMemory((n,), dtype) for name, dtype in ROW_ARRAYS}} for sl in plan.slices]
    _fill(pool, plan, offsets, lambda j, name: arrays[j][name], "index in memory")
    return [IvfIndex(centroids[j].astype(np.float32), offsets[j], **{name: a.array for name, a in arrays[j].items()})
            for j in range(len(plan.slices))]


def _fill(pool, plan: _Plan, offsets: np.ndarray, array, desc: str) -> None:
    """Write every table's rows into each part's list-major arrays (``array(part, name)``)."""
    def units():
        before = offsets[:, :-1].copy()
        for t, table in enumerate(plan.tables):
            yield t, table, before.copy()
            labels = first_probes(plan, t)
            for j in range(len(plan.slices)):
                before[j] += np.bincount(labels[:, j], minlength=before.shape[1])

    progress = Progress(desc, total=len(plan.tables), unit="tables")
    for _, rows in pool.runtime.stream(_write_table(plan, array), units()):
        progress.update(1, rows, "rows")


def _write_table(plan: _Plan, array):
    def write_table(unit: tuple[int, Path, np.ndarray]) -> int:
        t, table, before = unit
        x = plan.reader(table).rows()
        labels = first_probes(plan, t)
        ids = plan.ids(t)
        for j, sl in enumerate(plan.slices):
            order = np.argsort(labels[:, j], kind="stable")
            lab = labels[order, j]
            run_start = np.searchsorted(lab, lab, side="left")
            pos = np.empty(len(x), dtype=np.int64)
            pos[order] = before[j][lab] + (np.arange(len(x)) - run_start)
            if len(x):
                array(j, "vectors").write(pos, x[:, sl])
                array(j, "sq_norms").write(pos, sq_norms(x[:, sl]))
                array(j, "ids").write(pos, ids)
                array(j, "positions").write(ids, pos)
        return len(x)

    return write_table


def _write_faiss_indexes(plan: _Plan, centroids: list[np.ndarray]) -> None:
    """One faiss index file per part, rows added table by table in shard order (ids: their ranks)."""
    indexes = [FaissIvf.empty(c) for c in centroids]
    progress = Progress("write faiss index", total=len(plan.tables), unit="tables")
    for t, table in enumerate(plan.tables):
        x = plan.reader(table).rows()
        labels = first_probes(plan, t)
        for j, sl in enumerate(plan.slices):
            indexes[j].add(x[:, sl], labels[:, j], plan.ids(t))
        progress.update(1)
    for j, index in enumerate(indexes):
        index.save(plan.folder / f"part{j}.faiss")


def load_indexes(folder: Path, n_parts: int, use_faiss: bool, in_memory: bool = False) -> list[IvfIndex | FaissIvf]:
    """The parts' indexes in ``folder``: loaded whole when ``in_memory``, else read from disk as searched."""
    if use_faiss:
        return [FaissIvf.load(folder / f"part{j}.faiss") for j in range(n_parts)]
    return [IvfIndex.load(folder / f"part{j}", on_disk=not in_memory) for j in range(n_parts)]


def exact_search(pool, plan: _Plan, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest pool rows (ids) of ``queries``: a task per table, results merged. The first
    table's ``k``-th nearest bound the others' searches (``exact.exact_topk``): a row farther from a
    query than that cannot be among its ``k`` nearest, and the GEMM lets most rows go unscored."""
    units = list(enumerate(plan.tables))
    parts = pool.runtime.map(_exact_against_table(plan, queries, k), units[:1], "exact kNN (calibration, bound)")
    bound = parts[0][0][:, k - 1]
    parts += pool.runtime.map(_exact_against_table(plan, queries, k, bound), units[1:], "exact kNN (calibration)")
    return sorted_topk(np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1), k)


def _exact_against_table(plan: _Plan, queries: np.ndarray, k: int, bound: np.ndarray | None = None):
    def exact_against_table(unit: tuple[int, Path]) -> tuple[np.ndarray, np.ndarray]:
        t, table = unit
        return exact_topk(plan.reader(table), plan.ids(t), queries, k, bound)

    return exact_against_table


def _SearchRows(plan: _Plan, k: int, k1: int, m1: int, nprobe: int, use_faiss: bool,  # noqa: N802
                budget: int, in_memory: bool, shared: list[IvfIndex] | None = None):
    """A search task over runs of rows; ``shared``: indexes in this process's memory (in-process tasks)."""
    def search_rows_task(unit: list[Segment]) -> int:
        x = np.concatenate([plan.reader(s.table).rows(s.lo, s.hi) for s in unit])
        query_ids = np.concatenate([plan.ids(s.t, s.lo, s.hi) for s in unit])
        probes = None
        if nprobe <= plan.kept:
            stored = np.concatenate([DiskArray(plan.probes_file(s.t)).rows(s.lo, s.hi) for s in unit])
            probes = [np.ascontiguousarray(stored[:, j, :], dtype=np.int64) for j in range(len(plan.slices))]
        indexes = shared or load_indexes(plan.folder, len(plan.slices), use_faiss, in_memory)
        d, i = search_parts(x, indexes, plan.slices, k1, m1, nprobe, plan.device, probes, pairs=budget // 128)
        d, i = remove_self(d, i, query_ids)
        if i.shape[1] < k:
            i = np.pad(i, ((0, 0), (0, k - i.shape[1])), constant_values=-1)
            d = np.pad(d, ((0, 0), (0, k - d.shape[1])), constant_values=np.inf)
        DiskArray(plan.folder / "neighbors.npy").write(query_ids, i)
        DiskArray(plan.folder / "distances.npy").write(query_ids, d)
        return len(x)

    return search_rows_task
