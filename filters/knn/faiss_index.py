"""faiss's IVF index over the same lists: ``IndexIVFScalarQuantizer`` with fp16 codes (lossless for the
pool's fp16 embeddings, half the memory of ``IndexIVFFlat``), squared L2, not by residual.

The quantizer holds the centroids of ``lists.train_lists``; rows go to the lists given (their first
probe, as for ``index.IvfIndex``), with the row ids given (a hash table maps ids to rows).
faiss keeps the first equal distances it scans when more than ``k`` tie at the cut, which follows the
order rows were added; a query with a tie at the cut is searched again with a larger ``k`` until the
tie is whole, and its hits are cut by id (``_topk``), as ``index.IvfIndex`` cuts them. Queries with known probes are searched with
``search_preassigned`` in the order of their first list (neighbouring queries then scan the same lists
while they are in cache). The index is written once (``faiss.write_index``) and read by Ray workers
with ``faiss.IO_FLAG_MMAP``: its inverted lists stay on disk, memory-mapped. On ``cuda`` with faiss's GPU
build (the ``[gpu]`` extra) the index is copied to every GPU (``index_cpu_to_all_gpus``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poolsieve.core.progress import Progress

from .._device import faiss_gpu_available
from .._topk import sorted_topk_full
from .lists import coarse_probes

QUERY_CHUNK = 65536
GPU_MAX_K = 2048  # faiss GPU searches return at most this many hits


class FaissIvf:
    """One feature part's faiss IVF index (on CPU; copied to the GPUs by the first search on ``cuda``)."""

    on_disk = False  # faiss holds its index in memory

    def __init__(self, index, centroids: np.ndarray):
        self.index = index
        self.centroids = np.asarray(centroids, dtype=np.float32)
        self._gpu = None  # the GPU copy, made on the first GPU search

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    @classmethod
    def empty(cls, centroids: np.ndarray) -> FaissIvf:
        """A trained index with no rows: quantizer = ``centroids``, fp16 codes."""
        import faiss

        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        nlist, dim = centroids.shape
        quantizer = faiss.IndexFlatL2(dim)
        quantizer.add(centroids)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_L2, False)
        index.train(centroids)  # the quantizer is full already; this only readies the fp16 codec
        index.own_fields = True
        quantizer.this.disown()
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # ids -> rows, for vectors_of
        return cls(index, centroids)

    def add(self, x: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Append rows ``x`` with ids ``ids`` (default: continuing from the rows already in) to the lists ``labels``."""
        import faiss

        if ids is None:
            ids = np.arange(self.index.ntotal, self.index.ntotal + len(x), dtype=np.int64)
        for s in range(0, len(x), QUERY_CHUNK):
            chunk = np.ascontiguousarray(x[s:s + QUERY_CHUNK], dtype=np.float32)
            lab = np.ascontiguousarray(labels[s:s + len(chunk)], dtype=np.int64)
            some = np.ascontiguousarray(ids[s:s + len(chunk)], dtype=np.int64)
            self.index.add_core(len(chunk), faiss.swig_ptr(chunk), faiss.swig_ptr(some), faiss.swig_ptr(lab))

    @classmethod
    def build(cls, x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> FaissIvf:
        out = cls.empty(centroids)
        out.add(x, labels)
        return out

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path) -> FaissIvf:
        """The index at ``path``, its inverted lists memory-mapped."""
        import faiss

        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        ivf = faiss.extract_index_ivf(index)
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        return cls(index, centroids)

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The float32 vectors of row ids ``ids`` (any shape; a trailing axis is added)."""
        flat = np.ascontiguousarray(ids.ravel(), dtype=np.int64)
        return self.index.reconstruct_batch(flat).reshape(*ids.shape, -1)

    def search(self, queries: np.ndarray, k: int, nprobe: int = 1, device: str = "cpu",
               desc: str | None = None, probes: np.ndarray | None = None,
               pairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)`` of each query's ``k`` nearest rows, nearest first; -1 / inf where missing.
        (``pairs`` is ``IvfIndex.search``'s; faiss bounds its own working set.)"""
        nq = len(queries)
        nprobe = max(1, min(nprobe, self.nlist))
        dist = np.full((nq, k), np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        progress = Progress(desc, total=nq, unit="queries") if desc else None
        gpu = device == "cuda" and faiss_gpu_available() and k <= GPU_MAX_K
        index = self._gpu_copy() if gpu else self.index
        if not gpu:
            self.index.nprobe = nprobe
        for start in range(0, nq, QUERY_CHUNK):
            q = np.ascontiguousarray(queries[start:start + QUERY_CHUNK], dtype=np.float32)
            pr = None
            if not gpu:
                pr = probes[start:start + len(q), :nprobe] if probes is not None else None
                if pr is None or pr.shape[1] < nprobe:
                    pr = coarse_probes(q, self.centroids, nprobe, "cpu")
            d, i = self._search_whole_ties(index, q, k, nprobe, gpu, pr)
            dist[start:start + len(q)], ids[start:start + len(q)] = d, i
            if progress:
                progress.update(len(q))
        return dist, ids

    def _search_whole_ties(self, index, q: np.ndarray, k: int, nprobe: int, gpu: bool,
                           probes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest of each query, equal distances at the cut by id: a query whose ``k + 1``-th hit
        ties the ``k``-th is searched again with twice the hits until its last hit is farther."""
        d, i = sorted_topk_full(*self._search(index, q, k + 1, nprobe, gpu, probes), k + 1)
        rows = np.flatnonzero(np.isfinite(d[:, k - 1]) & (d[:, k] == d[:, k - 1]))
        most = GPU_MAX_K if gpu else max(k + 1, int(self.index.ntotal))
        wide = k + 1
        while len(rows) and wide < most:
            wide = min(2 * wide, most)
            dr, ir = self._search(index, q[rows], wide, nprobe, gpu, None if probes is None else probes[rows])
            cut = d[rows, k - 1]
            whole = (dr[:, -1] != cut) | (ir[:, -1] < 0) | (wide >= self.index.ntotal)  # every tie is in
            d[rows[whole]], i[rows[whole]] = sorted_topk_full(dr[whole], ir[whole], k + 1)
            rows = rows[~whole]
        return d[:, :k], i[:, :k]

    def _search(self, index, q: np.ndarray, k: int, nprobe: int, gpu: bool,
                probes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """faiss's search: ``(distances, ids)``, -1 / inf where missing."""
        if gpu:
            d, i = _gpu_search(index, q, k, nprobe)
        else:
            order = np.argsort(probes[:, 0], kind="stable")
            pr = np.ascontiguousarray(probes[order], dtype=np.int64)
            d, i = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
            d[order], i[order] = self.index.search_preassigned(q[order], k, pr, np.zeros(pr.shape, np.float32))
        i = np.where(i >= 0, i, -1)
        return np.where(i >= 0, d, np.inf), i

    def _gpu_copy(self):
        import faiss

        if self._gpu is None:
            self._gpu = faiss.index_cpu_to_all_gpus(self.index)
        return self._gpu


def _gpu_search(index, q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    return index.search(q, k)
