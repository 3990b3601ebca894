"""``decontaminate``'s matching: one score table's member rows against the evaluation reference set.

``match_table`` finds, per member row, the exact match (sha256, stored or metadata digest), and what the
near rules need: the cosine to the nearest reference image (embedding), the Hamming distance to the
nearest reference hash (phash), and the best cosine among the reference images within ``max_distance``
bits (phash+embedding). Pool rows are compared with the reference a block at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.formats import PHASH_COLUMN

from ._embeddings import TableEmbeddings, read_reference_arrays
from ._phash_match import NO_HASH, PAIRS_PER_BLOCK, distances, nearest_by_phash
from .columns import read_members
from .semdedup import unit_rows

MAX_NAME = 200  # characters of a reference image's label or source kept in the record


@dataclass
class Reference:
    """The reference set as the filter uses it: digests (to the first row with each), unit image embeddings
    and perceptual hashes (None where not compared), each row's label and source, and its file."""

    path: Path
    rows: dict[str, int]
    emb: np.ndarray | None
    phash: np.ma.MaskedArray | None = None
    labels: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        for values in (self.emb, self.phash, self.labels):
            if values is not None and len(values):
                return len(values)
        return len(self.rows)

    def describe(self, row: int) -> dict[str, str]:
        """A reference image's label and source (where it came from), as the record keeps them."""
        def at(values: list[str]) -> str:
            return values[row][:MAX_NAME] if 0 <= row < len(values) else ""
        return {"label": at(self.labels), "source": at(self.sources)}


def _strings(z: Any, key: str) -> list[str]:
    return [str(v) for v in z[key]] if key in z.files and z[key].ndim == 1 else []


def load_reference(path: Path, image_key: str | None, exact: bool, phash: np.ma.MaskedArray | None) -> Reference:
    """The reference file ``path`` (see ``Reference``); bad or missing arrays are one-line errors."""
    emb, hashes = read_reference_arrays(path, image_key, sha256=exact)
    with np.load(path, allow_pickle=False) as z:
        digests, labels, sources = _strings(z, "sha256") if hashes else [], _strings(z, "labels"), _strings(z, "sources")
    if emb is not None and phash is not None and len(emb) != len(phash):
        raise InputError(path, f"{len(emb)} embeddings but {len(phash)} perceptual hashes: misaligned")
    rows: dict[str, int] = {}
    for i, h in enumerate(digests):
        rows.setdefault(h, i)
    return Reference(path, rows, None if emb is None else unit_rows(emb), phash, labels, sources)


def nearest_reference(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's highest cosine similarity to any reference row (both unit length) and that row's index,
    block by block."""
    best = np.full(len(x), -1.0, dtype=np.float32)
    which = np.zeros(len(x), dtype=np.int64)
    block = max(1, PAIRS_PER_BLOCK // max(1, len(ref)))
    for lo in range(0, len(x), block):
        sims = x[lo:lo + block] @ ref.T
        which[lo:lo + block] = sims.argmax(axis=1)
        best[lo:lo + block] = sims[np.arange(len(sims)), which[lo:lo + block]]
    return best, which


def confirmed_by_embedding(x: np.ndarray, ref: np.ndarray, rows: np.ndarray, valid: np.ndarray,
                           hashes: np.ma.MaskedArray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's highest cosine among the reference images within ``max_distance`` bits of its hash (-2
    where none is) and that image's row, block by block."""
    best = np.full(len(x), -2.0, dtype=np.float32)
    which = np.zeros(len(x), dtype=np.int64)
    block = max(1, PAIRS_PER_BLOCK // max(1, len(ref)))
    for lo in range(0, len(x), block):
        sims = np.where(distances(rows[lo:lo + block], valid[lo:lo + block], hashes) <= max_distance,
                        x[lo:lo + block] @ ref.T, np.float32(-2.0))
        which[lo:lo + block] = sims.argmax(axis=1)
        best[lo:lo + block] = sims[np.arange(len(sims)), which[lo:lo + block]]
    return best, which


@dataclass
class TableMatches:
    """One table's member rows against the reference: uids, the exact matches (the reference row each
    matched, -1 where none), and what was compared: the nearest reference by cosine, by phash, and the
    best cosine among the references within ``max_distance`` bits (each None when not compared)."""

    uids: np.ndarray
    exact_row: np.ndarray
    cosine: np.ndarray | None = None
    nearest: np.ndarray | None = None
    bits: np.ndarray | None = None
    nearest_by_bits: np.ndarray | None = None
    confirm: np.ndarray | None = None
    confirm_row: np.ndarray | None = None
    emb: np.ndarray | None = field(default=None, repr=False)  # the rows' unit embeddings, when compared
    hashes: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # (values, valid), when compared
    ref: Reference | None = field(default=None, repr=False)

    @property
    def exact(self) -> np.ndarray:
        return self.exact_row >= 0

    def matched_row(self, i: int, how: str) -> int:
        """The reference row that made row ``i`` a near copy under rule ``how``."""
        rows = {"phash": self.nearest_by_bits, "embedding": self.nearest, "phash+embedding": self.confirm_row}[how]
        return int(rows[i])

    def measures(self, i: int, ref_row: int) -> dict[str, Any]:
        """Row ``i``'s Hamming distance and cosine to reference row ``ref_row``, where compared."""
        out: dict[str, Any] = {}
        if self.hashes is not None and self.ref is not None and self.ref.phash is not None:
            h, ok = self.hashes
            d = int(distances(h[i:i + 1], ok[i:i + 1], self.ref.phash[ref_row:ref_row + 1])[0, 0])
            if d != NO_HASH:
                out["distance"] = d
        if self.emb is not None and self.ref is not None and self.ref.emb is not None:
            out["cosine"] = round(float(self.emb[i].astype(np.float32) @ self.ref.emb[ref_row].astype(np.float32)), 6)
        return out


def _row_hashes(members: Any, table: Path) -> tuple[np.ndarray, np.ndarray]:
    """A members table's ``phash`` column as (uint64 values, valid mask)."""
    if PHASH_COLUMN not in members.column_names:
        raise InputError(table, "has no phash column (scored before it): re-run `poolsieve score --overwrite`")
    column = members[PHASH_COLUMN]
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.uint64)
    return values, valid


def match_table(table: Path, ref: Reference, metadata: dict[str, str], image_key: str | None,
                max_distance: int | None) -> TableMatches:
    """The exact matches of one table's members and, where asked, what the near rules compare: embeddings
    (``image_key``), perceptual hashes (``max_distance`` given), or both."""
    members = read_members(Path(table), [], optional=["sha256", PHASH_COLUMN])
    uids = np.asarray(members["uid"].to_pylist(), dtype=object)
    m = TableMatches(uids, np.full(len(uids), -1, dtype=np.int64), ref=ref)
    if ref.rows:
        stored = members["sha256"].to_pylist() if "sha256" in members.column_names else [None] * len(uids)
        for i, (u, h) in enumerate(zip(uids, stored, strict=True)):
            m.exact_row[i] = ref.rows.get(h, ref.rows.get(metadata.get(u), -1))
    if not len(uids):
        return m
    if max_distance is not None and ref.phash is not None:
        m.hashes = _row_hashes(members, Path(table))
        m.bits, m.nearest_by_bits = nearest_by_phash(*m.hashes, ref.phash)
    if ref.emb is not None and image_key is not None:
        emb = TableEmbeddings(Path(table), [image_key]).rows()
        if emb.shape[1] != ref.emb.shape[1]:
            raise InputError(table, f"embeddings are {emb.shape[1]}-d but the reference's are {ref.emb.shape[1]}-d")
        m.emb = unit_rows(emb)
        m.cosine, m.nearest = nearest_reference(m.emb, ref.emb)
        if m.hashes is not None:
            m.confirm, m.confirm_row = confirmed_by_embedding(m.emb, ref.emb, *m.hashes, ref.phash, max_distance)
    return m


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
