"""DataComp's image-based filter: keep pool clusters that sit near a target image distribution.

1. Caption filter (DataComp's ``caption_filter``): English caption (the score table's ``language``
   column, else fastText lid.176), more than 1 word and more than 5 characters.
2. k-means (faiss's, squared L2, seeded, as DataComp's ``faiss.Clustering``; on a GPU with faiss's GPU
   build) on the image embeddings of the rows that pass, or on a seeded ``sample_ratio`` of them.
3. Target clusters: each embedding of the target set (a labelled image set scored with the same model,
   ``<workspace>/references/<target>.npz`` or a path) goes to the centroid with the largest inner
   product; the target set is the union of those centroids.
4. Keep every caption-filtered row whose own inner-product centroid is a target cluster.

| param | default | meaning |
| --- | --- | --- |
| target | imagenet | reference name (``references/<name>.npz``) or a path to an ``.npz`` with ``<key>_img`` |
| embedding | l14, else b32 | model key of the image embeddings |
| clusters | min(100000, rows // 10) | k-means clusters (DataComp: 100k) |
| iterations | 20 | k-means iterations (DataComp: 20; stops early when stable) |
| sample_ratio | 1.0 | share of caption-filtered rows k-means trains on |
| seed | 0 | initial centroids and the training sample |
| caption_filter | true | apply step 1 (DataComp always does) |
| language | en | caption language step 1 keeps |
| device | auto | ``cuda`` when torch sees a GPU, else ``cpu`` |

DataComp's combination with a CLIP-score threshold is the intersection with the ``clip_score`` filter.
Per-table work (caption filter, sample, assignment) runs through ``pool.map``: Ray tasks on a Ray
runtime, so only the k-means training sample sits in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.devices import resolve_device, task_resources
from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import embedding_keys
from poolsieve.core.language import count_fasttext_tokens
from poolsieve.core.uids import UidSet, hex_to_keys

from ._embeddings import pick_embedding_key, read_reference_arrays, reference_file
from ._kmeans import kmeans, nearest_centroid
from .basic import CAPTION_STATS, caption_stats, language_mask
from .columns import read_members
from .registry import ScoredPool, register

DATACOMP_CLUSTERS = 100_000


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


def _image_rows(table: Path, image_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(uids, image embeddings) of one table's successful rows."""
    pool = ScoredPool([Path(table)])
    return pool.read_columns([])["uid"].to_numpy(), pool.load_embeddings([image_key])[image_key]


def load_target(pool: ScoredPool, target: str, image_key: str) -> np.ndarray:
    """The target set's image embeddings: a reference name in the workspace or a path to an npz."""
    path = reference_file(pool, target, "score a labelled image set into references/ first")
    return read_reference_arrays(path, image_key)[0]


def _check(clusters, iterations, sample_ratio) -> None:
    if clusters is not None and (isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1):
        raise ConfigError(f"image_based: clusters must be a positive integer, got {clusters!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"image_based: iterations must be a positive integer, got {iterations!r}")
    if isinstance(sample_ratio, bool) or not isinstance(sample_ratio, (int, float)) or not 0 < sample_ratio <= 1:
        raise ConfigError(f"image_based: sample_ratio must be in (0, 1], got {sample_ratio!r}")


def image_based_run(pool: ScoredPool, *, target: str = "imagenet", embedding: str | None = None,
                    clusters: int | None = None, iterations: int = 20, sample_ratio: float = 1.0, seed: int = 0,
                    caption_filter: bool = True, language: str = "en", device: str = "auto") -> dict:
    """Run the filter; returns the kept uids plus the centroids and target clusters (for inspection)."""
    _check(clusters, iterations, sample_ratio)
    device = resolve_device(device)
    key = pick_embedding_key(pool, embedding)
    image_key = embedding_keys(key)[0]
    target_emb = load_target(pool, target, image_key)
    masks = pool.map(lambda t: _caption_mask(t, caption_filter, language), "caption filter")
    n_pass = int(sum(int(m.sum()) for m in masks))
    k = clusters or max(1, min(DATACOMP_CLUSTERS, n_pass // 10))
    size = n_pass if sample_ratio >= 1 else max(k, int(n_pass * sample_ratio))
    if n_pass < k or size < k:
        raise ConfigError(f"image_based: {k} clusters need at least {k} training rows; "
                          f"{n_pass} rows pass the caption filter (sample: {size})")
    chosen = np.sort(np.random.default_rng(seed).choice(n_pass, size=size, replace=False)) if size < n_pass else None
    starts = np.concatenate([[0], np.cumsum([int(m.sum()) for m in masks])])

    def take_sample(i_table):
        i, table = i_table
        passing = _image_rows(table, image_key)[1][masks[i]]
        if chosen is None:
            return passing
        local = chosen[(chosen >= starts[i]) & (chosen < starts[i + 1])] - starts[i]
        return passing[local]

    sample = np.concatenate(pool.runtime.map(take_sample, list(enumerate(pool.tables)), "k-means sample"))
    if target_emb.shape[1] != sample.shape[1]:
        raise InputError(None, f"target embeddings are {target_emb.shape[1]}-d but the pool's {image_key} are {sample.shape[1]}-d")
    centroids = kmeans(sample, k, niter=iterations, seed=seed, device=device, desc="image_based k-means").centroids
    del sample
    target_ids = np.unique(nearest_centroid(target_emb, centroids, "ip", device)[0])

    def keep(i_table):
        i, table = i_table
        uids, emb = _image_rows(table, image_key)
        labels, _ = nearest_centroid(emb[masks[i]], centroids, "ip", device)
        return UidSet(hex_to_keys(uids[masks[i]][np.isin(labels, target_ids)], source=table))

    kept = pool.runtime.map(keep, list(enumerate(pool.tables)), "image_based assign", **task_resources(device))
    return {"uids": UidSet.union_of(kept), "centroids": centroids, "target_clusters": target_ids, "caption_pass": n_pass}


@register("image_based", params=image_based_run)
def image_based(pool: ScoredPool, *, report: dict | None = None, **params) -> UidSet:
    """Rows near the target distribution (DataComp's image-based filter).

    The parameters are ``image_based_run``'s (its signature is the one list of them and their defaults)."""
    result = image_based_run(pool, **params)
    if report is not None:
        report.update(clusters=len(result["centroids"]), target_clusters=len(result["target_clusters"]),
                      caption_pass=result["caption_pass"])
    return result["uids"]
