"""k-nearest-neighbour graphs over embeddings (D2 Pruning's graph): exact or IVF, on CPU or GPU.

``lists``: the IVF lists (faiss spherical k-means, nearest lists). ``index``: the list-major GEMM index
(also the exact search). ``faiss_index``: faiss's IVF index over the same lists. ``graph``: building the
graph in one process (self removal, per-part candidates with exact re-rank, ``nprobe`` calibration).
``sharded``: the same graph built with Ray against indexes written once and memory-mapped.
"""

from .graph import IMPLS, METHODS, KnnGraph, knn_graph, recall_at_k, remove_self
from .sharded import sharded_knn_graph

__all__ = ["IMPLS", "METHODS", "KnnGraph", "knn_graph", "recall_at_k", "remove_self", "sharded_knn_graph"]
