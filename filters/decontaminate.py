"""``decontaminate``: drop pool samples whose image is one of the evaluation tasks' images, or nearly.

DataComp removed from its pool every image that duplicates or nearly duplicates an image of its
evaluation tasks, so that no model trains on its own test set. This filter does the same against a
reference set of the evaluation images (made once by the score stage, which does the image work:
``poolsieve score --reference EVAL_IMAGES --name eval_tasks`` writes ``references/eval_tasks.npz`` with
each image's ``sha256`` and its embedding by the pool's models).

A pool row is dropped when

1. exact: its image's sha256 is one of the reference's. Both digests a row has are matched: the score
   table's ``sha256`` (of the downloaded bytes) and the metadata's ``sha256`` (of the bytes at the url,
   CommonPool's column, found by uid in ``metadata/*.parquet`` when the workspace has it);
2. near: the cosine similarity of its image embedding to some reference image is at least
   ``threshold``.

| param | default | meaning |
| --- | --- | --- |
| reference | eval_tasks | a reference name in ``references/`` or a path to an npz |
| embedding | l14, else b32 | model key of the embeddings compared |
| threshold | 0.98 | cosine at or above which a pool image is a near copy; ``null``: exact matches only |
| exact | true | also drop sha256 matches |

The threshold depends on the model: a model whose embeddings tell instances apart (DataComp used a
copy-detection model) allows a lower one than a CLIP whose embeddings gather a whole class. On the
built-in pool, the tiny scorer puts a clean image at cosine 0.999 (median) from its nearest evaluation
image and the planted copies at 1.0000, so ``benchmarks/filter_quality.yaml`` uses 0.9999. Check what
it removes (``poolsieve inspect``) before trusting a threshold on a new pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import embedding_keys
from poolsieve.core.uids import UidSet, hex_to_keys
from poolsieve.core.workspace import Workspace

from ._embeddings import TableEmbeddings, pick_embedding_key, read_reference_arrays, reference_file
from .columns import read_members
from .registry import ScoredPool, register
from .semdedup import unit_rows

ROWS_PER_BLOCK_BUDGET = 2**25  # (pool row, reference image) similarities held at once


def load_reference(pool: ScoredPool, reference: str, image_key: str | None,
                   exact: bool) -> tuple[set[str], np.ndarray | None]:
    """(sha256 digests, unit image embeddings or None) of the reference set."""
    path = reference_file(pool, reference, "embed the evaluation images first: "
                                           f"poolsieve score --reference FOLDER --name {Path(reference).stem}")
    emb, hashes = read_reference_arrays(path, image_key, sha256=exact)
    return hashes, None if emb is None else unit_rows(emb)


def metadata_matches(pool: ScoredPool, hashes: set[str]) -> set[str]:
    """uids whose metadata ``sha256`` (of the bytes at the url) is one of ``hashes``: a task per metadata
    file of the workspace (none when it has no metadata), each returning only its matches."""
    ws = Workspace(Path(pool.tables[0]).parent.parent)
    folder = ws.metadata_dir
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    wanted = sorted(hashes)

    def matches(path: Path) -> set[str]:
        if "sha256" not in pq.read_schema(path).names:
            return set()
        t = pq.read_table(path, columns=["uid", "sha256"])
        hit = pc.fill_null(pc.is_in(t["sha256"], value_set=pa.array(wanted, pa.string())), False)
        return {u for u in t.filter(hit)["uid"].to_pylist() if u}

    return set().union(*pool.runtime.map(matches, files, "decontaminate (metadata)")) if files else set()


def max_similarity(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Each row's highest cosine similarity to any reference row (both unit length), block by block."""
    out = np.full(len(x), -1.0, dtype=np.float32)
    block = max(1, ROWS_PER_BLOCK_BUDGET // max(1, len(ref)))
    for lo in range(0, len(x), block):
        out[lo:lo + block] = (x[lo:lo + block] @ ref.T).max(axis=1)
    return out


def contaminated(table: Path, hashes: set[str], matched_uids: set[str], ref: np.ndarray | None,
                 image_key: str | None, threshold: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uids, exact-match mask, near-match mask) over one table's member rows."""
    members = read_members(Path(table), [], optional=["sha256"])
    uids = np.asarray(members["uid"].to_pylist(), dtype=object)
    exact = np.zeros(len(uids), dtype=bool)
    if hashes:
        stored = members["sha256"].to_pylist() if "sha256" in members.column_names else [None] * len(uids)
        exact = np.fromiter(((h in hashes) or (u in matched_uids) for u, h in zip(uids, stored, strict=True)),
                            dtype=bool, count=len(uids))
    near = np.zeros(len(uids), dtype=bool)
    if ref is not None and image_key is not None and len(uids):
        emb = TableEmbeddings(Path(table), [image_key]).rows()
        if emb.shape[1] != ref.shape[1]:
            raise InputError(table, f"embeddings are {emb.shape[1]}-d but the reference's are {ref.shape[1]}-d")
        near = max_similarity(unit_rows(emb), ref) >= threshold
    return uids, exact, near


@register("decontaminate")
def decontaminate(pool: ScoredPool, *, reference: str = "eval_tasks", embedding: str | None = None,
                  threshold: float | None = 0.98, exact: bool = True, report: dict | None = None) -> UidSet:
    """Drop exact (sha256) and near (embedding cosine >= threshold) copies of the evaluation images."""
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not -1 <= threshold <= 1):
        raise ConfigError(f"decontaminate: threshold must be a cosine in [-1, 1] or null, got {threshold!r}")
    if threshold is None and not exact:
        raise ConfigError("decontaminate: with threshold null and exact false nothing would be compared")
    image_key = embedding_keys(pick_embedding_key(pool, embedding))[0] if threshold is not None else None
    hashes, ref = load_reference(pool, reference, image_key, bool(exact))
    matched = metadata_matches(pool, hashes) if hashes else set()

    def one(table: Path) -> Any:
        uids, is_exact, is_near = contaminated(table, hashes, matched, ref, image_key, threshold)
        keep = ~(is_exact | is_near)
        return UidSet(hex_to_keys(uids[keep], source=table)), int(is_exact.sum()), int((is_near & ~is_exact).sum())

    parts = pool.map(one, "decontaminate")
    if report is not None:
        report.update(exact_copies=sum(p[1] for p in parts), near_copies=sum(p[2] for p in parts),
                      reference_images=len(ref) if ref is not None else len(hashes))
    return UidSet.union_of(p[0] for p in parts)
