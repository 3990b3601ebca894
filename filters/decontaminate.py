"""``decontaminate``: drop pool samples whose image is one of the evaluation tasks' images, or nearly.

DataComp removed from its pool every image that duplicates or nearly duplicates an image of its
evaluation tasks, so that no model trains on its own test set. This filter does the same against a
reference set of the evaluation images (made once by the score stage, which does the image work:
``poolsieve score --reference EVAL_IMAGES --name eval_tasks`` writes ``references/eval_tasks.npz`` with
each image's ``sha256``, label, source and embedding by the pool's models).

A pool row is dropped when

1. exact: its image's sha256 is one of the reference's. Both digests a row has are matched: the score
   table's ``sha256`` (of the downloaded bytes) and the metadata's ``sha256`` (of the bytes at the url,
   CommonPool's column, found by uid in ``metadata/*.parquet`` when the workspace has it);
2. near: its image embedding is nearly the same as some reference image's. Each row's distance is
   ``d = 1 - cos`` to its nearest reference image. With ``threshold: auto`` (the default) a row is a near
   copy when ``d <= ratio * median`` and ``cos >= min_cosine``, where ``median`` is the pool's own median of
   ``d`` (over the rows that are no exact copy; rounded down to 8 significant bits): a near copy is an
   extreme outlier against the pool's distribution, however well or badly the model tells images apart.
   A number is a fixed cosine (``cos >= threshold``); ``null`` matches exact copies only.

| param | default | meaning |
| --- | --- | --- |
| reference | eval_tasks | a reference name in ``references/`` or a path to an npz |
| embedding | l14, else b32 | model key of the embeddings compared |
| threshold | auto | ``auto`` (calibrated, above), a cosine in [-1, 1], or ``null``: exact matches only |
| ratio | 0.05 | ``auto``: a near copy is at most this share of the pool's median distance away |
| min_cosine | 0.95 | ``auto``: and at least this cosine (the rule's floor) |
| exact | true | also drop sha256 matches |

Why calibrated: a fixed cosine depends on the model. On a user's pool scored by a small self-trained
CLIP, cosine 0.98 matched 97.7% of the pool to some evaluation image; on the built-in pool the tiny
scorer puts a clean image at cosine 0.999 (median) from its nearest evaluation image. ``auto`` costs a
second pass over the embeddings (the first finds the median). The step's record says how many rows went
each way (``exact_copies``, ``near_copies``; the ``summary`` line that ``filter`` prints), the threshold
the rule came to, and the first ``MAX_MATCHES`` matches with the reference image each row matched (what
``poolsieve inspect`` shows beside a dropped row). Check what it removes before trusting it on a new pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
AUTO = "auto"
MAX_MATCHES = 200  # matches listed in the step's record, with the reference image each one matched
MAX_NAME = 200  # characters of a reference image's label or source kept in the record


@dataclass
class Reference:
    """The reference set as the filter uses it: digests (to the first row with each), unit image embeddings
    (None: exact matching only) and each row's label and source."""

    rows: dict[str, int]
    emb: np.ndarray | None
    labels: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def describe(self, row: int) -> dict[str, str]:
        """A reference image's label and source (where it came from), as the record keeps them."""
        def at(values: list[str]) -> str:
            return values[row][:MAX_NAME] if 0 <= row < len(values) else ""
        return {"label": at(self.labels), "source": at(self.sources)}


def _strings(z: Any, key: str) -> list[str]:
    return [str(v) for v in z[key]] if key in z.files and z[key].ndim == 1 else []


def load_reference(pool: ScoredPool, reference: str, image_key: str | None, exact: bool) -> Reference:
    """The reference set ``reference`` (see ``Reference``); bad or missing files are one-line errors."""
    path = reference_file(pool, reference, "embed the evaluation images first: "
                                           f"poolsieve score --reference FOLDER --name {Path(reference).stem}")
    emb, hashes = read_reference_arrays(path, image_key, sha256=exact)
    with np.load(path, allow_pickle=False) as z:
        digests, labels, sources = _strings(z, "sha256") if hashes else [], _strings(z, "labels"), _strings(z, "sources")
    rows: dict[str, int] = {}
    for i, h in enumerate(digests):
        rows.setdefault(h, i)
    return Reference(rows, None if emb is None else unit_rows(emb), labels, sources)


def metadata_matches(pool: ScoredPool, hashes: set[str]) -> dict[str, str]:
    """uid -> metadata ``sha256`` (of the bytes at the url) for the uids whose digest is one of ``hashes``: a
    task per metadata file of the workspace (none when it has no metadata), each returning only its matches."""
    ws = Workspace(Path(pool.tables[0]).parent.parent)
    folder = ws.metadata_dir
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    wanted = sorted(hashes)

    def matches(path: Path) -> dict[str, str]:
        if "sha256" not in pq.read_schema(path).names:
            return {}
        t = pq.read_table(path, columns=["uid", "sha256"])
        hit = t.filter(pc.fill_null(pc.is_in(t["sha256"], value_set=pa.array(wanted, pa.string())), False))
        return {u: h for u, h in zip(hit["uid"].to_pylist(), hit["sha256"].to_pylist(), strict=True) if u}

    found: dict[str, str] = {}
    for part in (pool.runtime.map(matches, files, "decontaminate (metadata)") if files else []):
        found.update(part)
    return found


def nearest_reference(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's highest cosine similarity to any reference row (both unit length) and that row's index,
    block by block."""
    best = np.full(len(x), -1.0, dtype=np.float32)
    which = np.zeros(len(x), dtype=np.int64)
    block = max(1, ROWS_PER_BLOCK_BUDGET // max(1, len(ref)))
    for lo in range(0, len(x), block):
        sims = x[lo:lo + block] @ ref.T
        which[lo:lo + block] = sims.argmax(axis=1)
        best[lo:lo + block] = sims[np.arange(len(sims)), which[lo:lo + block]]
    return best, which


@dataclass
class TableMatches:
    """One table's member rows against the reference: uids, the exact matches (with the reference row each
    matched, -1 where none) and, when embeddings are compared, each row's nearest reference and cosine."""

    uids: np.ndarray
    exact_row: np.ndarray
    cosine: np.ndarray | None
    nearest: np.ndarray | None

    @property
    def exact(self) -> np.ndarray:
        return self.exact_row >= 0


def match_table(table: Path, ref: Reference, metadata: dict[str, str], image_key: str | None) -> TableMatches:
    """The exact matches of one table's members and, given ``image_key``, their nearest reference images."""
    members = read_members(Path(table), [], optional=["sha256"])
    uids = np.asarray(members["uid"].to_pylist(), dtype=object)
    exact_row = np.full(len(uids), -1, dtype=np.int64)
    if ref.rows:
        stored = members["sha256"].to_pylist() if "sha256" in members.column_names else [None] * len(uids)
        for i, (u, h) in enumerate(zip(uids, stored, strict=True)):
            exact_row[i] = ref.rows.get(h, ref.rows.get(metadata.get(u), -1))
    if ref.emb is None or image_key is None or not len(uids):
        return TableMatches(uids, exact_row, None, None)
    emb = TableEmbeddings(Path(table), [image_key]).rows()
    if emb.shape[1] != ref.emb.shape[1]:
        raise InputError(table, f"embeddings are {emb.shape[1]}-d but the reference's are {ref.emb.shape[1]}-d")
    cosine, nearest = nearest_reference(unit_rows(emb), ref.emb)
    return TableMatches(uids, exact_row, cosine, nearest)


def distance_keys(cosine: np.ndarray) -> np.ndarray:
    """``d = 1 - cos`` (at least 0) as uint16 keys whose order is d's: float32's top 16 bits (8 significant)."""
    d = np.maximum(1.0 - cosine.astype(np.float64), 0.0).astype(np.float32)
    return (d.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def key_value(key: int) -> float:
    """The smallest distance with uint16 key ``key`` (the bucket's lower edge)."""
    return float(np.array([key << 16], dtype=np.uint32).view(np.float32)[0])


def median_distance(histograms: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The (lower) median of the distances counted by per-table ``(keys, counts)``, rounded down to its
    key's lower edge; None when nothing was counted."""
    keys = np.concatenate([k for k, _ in histograms]) if histograms else np.zeros(0, np.uint16)
    counts = np.concatenate([c for _, c in histograms]) if histograms else np.zeros(0, np.int64)
    if not counts.sum():
        return None
    merged, inverse = np.unique(keys, return_inverse=True)
    totals = np.cumsum(np.bincount(inverse, weights=counts, minlength=len(merged)))
    return key_value(int(merged[int(np.searchsorted(totals, (totals[-1] - 1) // 2, side="right"))]))


def check_params(threshold: Any, ratio: Any, min_cosine: Any, exact: Any) -> None:
    """One-line ``ConfigError`` for parameters that cannot be used."""
    def number(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and np.isfinite(v)
    if threshold is not None and threshold != AUTO and not (number(threshold) and -1 <= threshold <= 1):
        raise ConfigError(f"decontaminate: threshold must be 'auto', a cosine in [-1, 1] or null, got {threshold!r}")
    if not (number(ratio) and 0 <= ratio < 1):
        raise ConfigError(f"decontaminate: ratio must be a number in [0, 1), got {ratio!r}")
    if not (number(min_cosine) and -1 <= min_cosine <= 1):
        raise ConfigError(f"decontaminate: min_cosine must be a cosine in [-1, 1], got {min_cosine!r}")
    if threshold is None and not exact:
        raise ConfigError("decontaminate: with threshold null and exact false nothing would be compared")


def near_rule(median: float | None, ratio: float, min_cosine: float) -> tuple[float | None, str]:
    """``threshold: auto``'s cosine cut from the pool's median distance, and the rule in words."""
    if median is None:
        return None, "no row to compare"
    cut = 1.0 - ratio * median
    if cut < min_cosine:
        return float(min_cosine), f"the floor min_cosine; 1 - {ratio:g} x the pool's median distance {median:.3g} is lower"
    return cut, f"1 - {ratio:g} x the pool's median distance {median:.3g}"


def listed_matches(m: TableMatches, near: np.ndarray, ref: Reference, room: int) -> list[dict[str, Any]]:
    """Up to ``room`` of one table's matches: uid, kind, the reference image matched, the cosine."""
    out = []
    for i in np.flatnonzero(m.exact | near)[:room]:
        row = int(m.exact_row[i]) if m.exact[i] else int(m.nearest[i])
        entry = {"uid": str(m.uids[i]), "kind": "exact" if m.exact[i] else "near", **ref.describe(row)}
        if m.cosine is not None:
            entry["cosine"] = round(float(m.cosine[i]), 6)
        out.append(entry)
    return out


@register("decontaminate", keeps="ratio: a smaller ratio takes fewer near copies (threshold=null: exact copies only)")
def decontaminate(pool: ScoredPool, *, reference: str = "eval_tasks", embedding: str | None = None,
                  threshold: float | str | None = AUTO, ratio: float = 0.05, min_cosine: float = 0.95,
                  exact: bool = True, report: dict | None = None) -> UidSet:
    """Drop exact (sha256) and near (embedding distance an outlier against the pool's) copies of the evaluation images."""
    check_params(threshold, ratio, min_cosine, exact)
    image_key = embedding_keys(pick_embedding_key(pool, embedding))[0] if threshold is not None else None
    ref = load_reference(pool, reference, image_key, bool(exact))
    metadata = metadata_matches(pool, set(ref.rows)) if ref.rows else {}
    rule = "fixed cosine" if threshold is not None else "exact only"
    median = None
    if threshold == AUTO:
        def histogram(table: Path) -> tuple[np.ndarray, np.ndarray]:
            m = match_table(table, ref, metadata, image_key)
            cosine = m.cosine[~m.exact] if m.cosine is not None else np.zeros(0, np.float32)
            return np.unique(distance_keys(cosine), return_counts=True)

        median = median_distance(pool.map(histogram, "decontaminate (the pool's distances)"))
        threshold, rule = near_rule(median, float(ratio), float(min_cosine))

    def one(table: Path) -> tuple[UidSet, int, int, list[dict[str, Any]]]:
        m = match_table(table, ref, metadata, image_key if threshold is not None else None)
        near = (m.cosine >= threshold) & ~m.exact if m.cosine is not None else np.zeros(len(m.uids), dtype=bool)
        keep = ~(m.exact | near)
        return (UidSet(hex_to_keys(m.uids[keep], source=table)), int(m.exact.sum()), int(near.sum()),
                listed_matches(m, near, ref, MAX_MATCHES))

    parts = pool.map(one, "decontaminate")
    if report is not None:
        report.update(_record(parts, ref, threshold, rule, median))
    return UidSet.union_of(p[0] for p in parts)


def _record(parts: list[tuple], ref: Reference, threshold: float | None, rule: str, median: float | None) -> dict:
    """The step's details: counts apart, the rule and the threshold it came to, the first matches listed."""
    exact, near = sum(p[1] for p in parts), sum(p[2] for p in parts)
    matches = [m for p in parts for m in p[3]][:MAX_MATCHES]
    cut = f"cosine >= {threshold:.6f}: {rule}" if threshold is not None else rule
    out = {"exact_copies": exact, "near_copies": near,
           "reference_images": len(ref.emb) if ref.emb is not None else len(ref.rows), "rule": rule,
           "summary": f"{exact:,} exact (sha256), {near:,} near ({cut})", "matches": matches}
    if threshold is not None:
        out["threshold"] = float(threshold)
    if median is not None:
        out["median_distance"] = median
    return out
