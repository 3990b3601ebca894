"""k-nearest-neighbour graphs over embeddings (D2 Pruning's graph): exact or IVF, on CPU or GPU.

``lists``: the IVF lists (faiss spherical k-means, nearest lists). ``index``: the list-major GEMM index
(also the exact search), in memory or read list by list from disk. ``faiss_index``: faiss's IVF index
over the same lists. ``graph``: building the graph of an array in one process (self removal, per-part
candidates with exact re-rank, ``nprobe`` calibration). ``sharded``: the same graph of a pool built
table by table (Ray tasks or in-process) into a spill folder, in bounded memory.
"""

from .graph import IMPLS, METHODS, KnnGraph, knn_graph, recall_at_k, remove_self
from .sharded import GraphFiles, build_graph

__all__ = ["IMPLS", "METHODS", "GraphFiles", "KnnGraph", "build_graph", "knn_graph", "recall_at_k", "remove_self"]
