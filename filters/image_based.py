"""DataComp's image-based filter: keep pool clusters that sit near a target image distribution.

1. Caption filter (DataComp's ``caption_filter``): English caption (the score table's ``language``
   column, else fastText lid.176), more than 1 word and more than 5 characters.
2. k-means (faiss's, squared L2, seeded, as DataComp's ``faiss.Clustering``; on a GPU with faiss's GPU
   build) on the image embeddings of the rows that pass, or on the first ``sample_ratio`` of them in the
   pool's row order of ``seed`` (``_row_order``: a seeded hash of the uid), given in that order.
3. Target clusters: each embedding of the target set (a labelled image set scored with the same model,
   ``<workspace>/references/<target>.npz`` or a path) goes to the centroid with the largest inner
   product; the target set is the union of those centroids.
4. Keep every caption-filtered row whose own inner-product centroid is a target cluster.

| param | default | meaning |
| --- | --- | --- |
| target | imagenet | reference name (``references/<name>.npz``), a path to an ``.npz`` with ``<key>_img``, or DataComp's ImageNet-1k L/14 targets: a folder (``assets/``) of ``in1k_clip_vit_l14_{0..4}.pt``, a glob, a ``.pt`` file or a list of files (``_target_file``; read without running code) |
| centroids | - | a file of precomputed centroids (DataComp's released ``*_centroids``, a ``torch.save``d float32 array; a pickled array; or ``.npy``): no k-means; read without running code (``_centroid_file``) |
| embedding | l14, else b32 | model key of the image embeddings |
| clusters | min(100000, rows // 10) | k-means clusters (DataComp: 100k) |
| iterations | 20 | k-means iterations (DataComp: 20; stops early when stable) |
| sample_ratio | 1.0 | share of caption-filtered rows k-means trains on |
| seed | 0 | initial centroids and the training sample (the row order of ``seed``) |
| caption_filter | true | apply step 1 (DataComp always does) |
| language | en | caption language step 1 keeps |
| device | auto | ``cuda`` when torch sees a GPU, else ``cpu`` |

| order-sensitive step | decided by (never by where rows are stored) |
| --- | --- |
| k-means sample and its order (the initial centroids) | the first caption-passing rows in the row order of ``seed`` |
| nearest centroid (targets and rows) | the lower centroid number on equal inner products (``_kmeans.nearest_centroids``) |

DataComp's combination with a CLIP-score threshold is the intersection with the ``clip_score`` filter.
(DataComp's own k-means takes its rows in the order ``fs.ls`` lists the metadata files, so its
centroids follow the file system; ``centroids=`` with its released file is the way to its subset.)
Per-table work (caption filter, sample, assignment) runs through ``pool.map``: Ray tasks on a Ray
runtime, each reading its own table. The driver holds each table's caption mask (1 byte per row),
the k-means sample (gathered table by table into one float32 array, cut to its first rows in the row
order to fit half the memory budget, with a warning), the centroids and the kept uids; with
``centroids`` there is no sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.devices import resolve_device, task_resources
from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import embedding_keys
from poolsieve.core.language import count_fasttext_tokens
from poolsieve.core.uids import UidSet

from ._budget import fit_count, rows_within
from ._centroid_file import read_centroids
from ._embeddings import (
    TableEmbeddings,
    gather_rows,
    pick_embedding_key,
    read_target,
)
from ._kmeans import kmeans, nearest_centroid
from ._row_order import first_rows
from .basic import CAPTION_STATS, caption_stats, language_mask
from .columns import member_keys, read_members
from .registry import ScoredPool, register

DATACOMP_CLUSTERS = 100_000
SAMPLE_SHARE = 0.5  # of the budget for the k-means sample


def caption_filter_mask(table: Any, language: str = "en") -> np.ndarray:
    """DataComp's caption filter over a members table: words > 1, characters > 5, language == ``language``
    (score's stored language where the table has it, computed otherwise). Words are counted as DataComp
    counts them here, with fastText's tokenizer (a newline is a token); basic's ``str.split`` count is
    used only for a table without captions."""
    words, chars = caption_stats(table)
    if "text" in table.column_names:
        words = count_fasttext_tokens(table["text"])
    return language_mask(table, (words > 1) & (chars > 5), language, recompute=False)


def _caption_mask(table: Path, caption_filter: bool, language: str) -> np.ndarray:
    """Which of one table's successful rows pass the caption filter."""
    members = read_members(Path(table), ["text"], optional=["language", *CAPTION_STATS], uid=False)
    if not caption_filter:
        return np.ones(members.num_rows, dtype=bool)
    return caption_filter_mask(members, language)


def load_target(pool: ScoredPool, target: str | list[str], image_key: str) -> np.ndarray:
    """The target set's image embeddings: a reference name in the workspace, a path to an npz, or DataComp's
    target files (``_target_file``: a ``.pt`` file, a folder of ``in1k_clip_vit_l14_{0..4}.pt``, a glob, a list)."""
    return read_target(pool, target, image_key, "score a labelled image set into references/ first, or give "
                                                "DataComp's in1k_clip_vit_l14_{0..4}.pt as a folder or files")


def _check(clusters, iterations, sample_ratio, centroids) -> None:
    if clusters is not None and (isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1):
        raise ConfigError(f"image_based: clusters must be a positive integer, got {clusters!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"image_based: iterations must be a positive integer, got {iterations!r}")
    if isinstance(sample_ratio, bool) or not isinstance(sample_ratio, (int, float)) or not 0 < sample_ratio <= 1:
        raise ConfigError(f"image_based: sample_ratio must be in (0, 1], got {sample_ratio!r}")
    if centroids is not None and (not isinstance(centroids, (str, Path)) or clusters is not None):
        raise ConfigError("image_based: centroids is the path of a centroid file, and replaces clusters "
                          f"(got centroids={centroids!r}, clusters={clusters!r})")


def image_based_run(pool: ScoredPool, *, target: str | list[str] = "imagenet", embedding: str | None = None,
                    clusters: int | None = None, iterations: int = 20, sample_ratio: float = 1.0, seed: int = 0,
                    caption_filter: bool = True, language: str = "en", device: str = "auto",
                    centroids: str | None = None) -> dict:
    """Run the filter; returns the kept uids plus the centroids and target clusters (for inspection)."""
    _check(clusters, iterations, sample_ratio, centroids)
    device = resolve_device(device)
    image_key = embedding_keys(pick_embedding_key(pool, embedding))[0]
    target_emb = load_target(pool, target, image_key)
    given = None if centroids is None else read_centroids(centroids)
    masks = pool.map(lambda t: _caption_mask(t, caption_filter, language), "caption filter")
    n_pass = int(sum(int(m.sum()) for m in masks))
    dim = target_emb.shape[1]
    if given is None:
        given = _train(pool, masks, image_key, dim, clusters, iterations, sample_ratio, seed, device)
    if given.shape[1] != dim:
        raise InputError(Path(centroids) if centroids else None, f"centroids are {given.shape[1]}-d but the "
                         f"target's {image_key} embeddings are {dim}-d")
    target_ids = np.unique(nearest_centroid(target_emb, given, "ip", device)[0])
    units = [(Path(t), m) for t, m in zip(pool.tables, masks, strict=True)]
    kept = pool.runtime.map(_Assign(image_key, given, target_ids, device), units, "image_based assign",
                            **task_resources(device))
    return {"uids": UidSet.union_of(kept), "centroids": given, "target_clusters": target_ids, "caption_pass": n_pass}


def _train(pool: ScoredPool, masks: list[np.ndarray], image_key: str, dim: int, clusters: int | None,
           iterations: int, sample_ratio: float, seed: int, device: str) -> np.ndarray:
    """k-means on the first caption-filtered rows in the row order of ``seed``, gathered in that order into
    one float32 array within the budget (``dim``: the embeddings' width, for its size)."""
    n_pass = int(sum(int(m.sum()) for m in masks))
    k = clusters or max(1, min(DATACOMP_CLUSTERS, n_pass // 10))
    size = n_pass if sample_ratio >= 1 else max(k, int(n_pass * sample_ratio))
    if n_pass < k or size < k:
        raise ConfigError(f"image_based: {k} clusters need at least {k} training rows; "
                          f"{n_pass} rows pass the caption filter (sample: {size})")
    fit = rows_within(pool.budget, 4 * dim, share=SAMPLE_SHARE, least=k)
    counts = [len(m) for m in masks]
    rows = first_rows(pool, counts, fit_count(size, fit, "image_based's k-means", pool.budget), seed, masks)
    sample = gather_rows(pool, [image_key], counts, rows, dtype=np.float32)
    return kmeans(sample, k, niter=iterations, seed=seed, device=device, desc="image_based k-means").centroids


def _Assign(image_key: str, centroids: np.ndarray, target_ids: np.ndarray, device: str):  # noqa: N802
    def keep(unit: tuple[Path, np.ndarray]) -> UidSet:
        table, mask = unit
        emb = TableEmbeddings(table, [image_key]).take(np.flatnonzero(mask))
        labels, _ = nearest_centroid(emb, centroids, "ip", device)
        uids = member_keys(read_members(table, []), table)[mask]
        return UidSet(uids[np.isin(labels, target_ids)])

    return keep


@register("image_based", params=image_based_run)
def image_based(pool: ScoredPool, *, report: dict | None = None, **params) -> UidSet:
    """Rows near the target distribution (DataComp's image-based filter).

    The parameters are ``image_based_run``'s (its signature is the one list of them and their defaults)."""
    result = image_based_run(pool, **params)
    if report is not None:
        report.update(clusters=len(result["centroids"]), target_clusters=len(result["target_clusters"]),
                      caption_pass=result["caption_pass"])
    return result["uids"]
