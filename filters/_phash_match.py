"""Matching 64-bit perceptual hashes (the score table's ``phash`` column) against a reference set's.

Two hashes are as far apart as the bits they differ in (Hamming distance, 0..64). Rows are compared with
every reference hash, a block of rows at a time (``PAIRS_PER_BLOCK`` pairs held at once); ``numpy.bitwise_count``
counts the bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.formats import PHASH_COLUMN, REFERENCE_PHASH, REFERENCE_PHASH_VALID

from .columns import table_columns

PAIRS_PER_BLOCK = 2**24
NO_HASH = 255  # the distance reported for a row or reference image without a hash: beyond any max_distance


def table_has_phash(table: Path) -> bool:
    """Whether a score table has the ``phash`` column (tables scored before it have none)."""
    return PHASH_COLUMN in table_columns(Path(table))


def reference_phashes(path: Path) -> np.ndarray | None:
    """A reference npz's hashes as uint64, with the images that have none masked (``np.ma``), or None
    when the file was made before hashes were stored."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if REFERENCE_PHASH not in z.files:
                return None
            hashes = z[REFERENCE_PHASH]
            valid = z[REFERENCE_PHASH_VALID] if REFERENCE_PHASH_VALID in z.files else np.ones(len(hashes), bool)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable .npz file ({e})") from None
    if hashes.dtype != np.uint64 or hashes.ndim != 1 or valid.shape != hashes.shape or valid.dtype != bool:
        raise InputError(path, f"{REFERENCE_PHASH} is {hashes.dtype} {hashes.shape}, expected uint64 (images,) "
                               f"with a bool {REFERENCE_PHASH_VALID} beside it")
    return np.ma.masked_array(hashes, mask=~valid)


def distances(rows: np.ndarray, rows_valid: np.ndarray, ref: np.ma.MaskedArray) -> np.ndarray:
    """``[len(rows), len(ref)]`` uint8 Hamming distances; ``NO_HASH`` where either side has no hash."""
    d = np.bitwise_count(rows[:, None] ^ ref.data[None, :]).astype(np.uint8)
    d[~rows_valid] = NO_HASH
    d[:, np.ma.getmaskarray(ref)] = NO_HASH
    return d


def nearest_by_phash(rows: np.ndarray, rows_valid: np.ndarray, ref: np.ma.MaskedArray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's smallest Hamming distance to a reference hash (``NO_HASH`` when none can be compared) and
    that reference row, block by block."""
    best = np.full(len(rows), NO_HASH, dtype=np.uint8)
    which = np.zeros(len(rows), dtype=np.int64)
    if not len(ref):
        return best, which
    block = max(1, PAIRS_PER_BLOCK // max(1, len(ref)))
    for lo in range(0, len(rows), block):
        d = distances(rows[lo:lo + block], rows_valid[lo:lo + block], ref)
        which[lo:lo + block] = d.argmin(axis=1)
        best[lo:lo + block] = d[np.arange(len(d)), which[lo:lo + block]]
    return best, which
