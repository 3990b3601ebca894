"""uid sets and their algebra, fast.

A subset file holds ``np.dtype("u8,u8")`` pairs. Internally a uid is kept as its 16 raw bytes in
big-endian order (``S16``): byte order then equals numeric order, so sorting, ``unique`` and the set
operations run as fixed-width byte compares, about 20x faster than on the structured pairs. The 16
bytes are exactly the uid's 32 hex characters decoded, so no integer arithmetic is needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.formats import SUBSET_DTYPE

KEY_DTYPE = np.dtype("S16")
_BIG_ENDIAN_PAIR = np.dtype(">u8,>u8")

_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def empty_keys() -> np.ndarray:
    return np.zeros(0, dtype=KEY_DTYPE)


def hex_uids_to_keys(uids, source: str | Path | None = None) -> np.ndarray:
    """uid column (32 lowercase hex chars each; pyarrow array or sequence of str) -> ``S16`` keys, same order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = uids if isinstance(uids, (pa.Array, pa.ChunkedArray)) else pa.array(list(uids), type=pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=pa.string())
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    n = len(arr)
    if n == 0:
        return empty_keys()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise InputError(source, f"uid column has type {arr.type}, expected strings of 32 hex characters")
    lengths = np.asarray(pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False))
    bad = lengths != 32
    if not bad.any():
        data = np.frombuffer(_concat_bytes(arr.cast(pa.large_binary())), dtype=np.uint8).reshape(n, 32)
        nibbles = _HEX_VALUE[data]
        bad = (nibbles == 255).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(source, f"bad uid {arr[i].as_py()!r} at row {i}: a uid is 32 lowercase hex characters")
    raw = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    return np.ascontiguousarray(raw).view(KEY_DTYPE).reshape(n)


def _concat_bytes(arr) -> bytes | memoryview:
    """The value bytes of a (large_)binary array with no nulls, back to back."""
    offsets_buf, data_buf = arr.buffers()[1], arr.buffers()[2]
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    return memoryview(data_buf)[offsets[0]: offsets[-1]]


def keys_to_pairs(keys: np.ndarray) -> np.ndarray:
    """``S16`` keys -> ``u8,u8`` pairs (same order)."""
    keys = np.ascontiguousarray(keys, dtype=KEY_DTYPE)
    return keys.view(_BIG_ENDIAN_PAIR).astype(SUBSET_DTYPE)


def pairs_to_keys(pairs: np.ndarray) -> np.ndarray:
    """``u8,u8`` pairs -> ``S16`` keys (same order)."""
    return np.ascontiguousarray(np.asarray(pairs).astype(_BIG_ENDIAN_PAIR)).view(KEY_DTYPE)


def normalize(keys: np.ndarray) -> np.ndarray:
    """Sorted, unique ``S16`` keys (``np.unique`` is 300x slower on ``S16`` in numpy 2)."""
    keys = np.sort(np.asarray(keys, dtype=KEY_DTYPE))
    if len(keys) < 2:
        return keys
    keep = np.empty(len(keys), dtype=bool)
    keep[0] = True
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]


def union(sets: Iterable[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(s, dtype=KEY_DTYPE) for s in sets]
    return normalize(np.concatenate(parts)) if parts else empty_keys()


def intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection of two sorted unique key sets."""
    if len(a) > len(b):
        a, b = b, a
    return a[contains(b, a)]


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` minus ``b`` (both sorted unique)."""
    return a[~contains(b, a)]


def contains(sorted_keys: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``probe`` are in the sorted unique ``sorted_keys``."""
    if len(sorted_keys) == 0 or len(probe) == 0:
        return np.zeros(len(probe), dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_keys, probe), len(sorted_keys) - 1)
    return sorted_keys[idx] == probe


def to_subset(keys: np.ndarray) -> np.ndarray:
    """Sorted unique ``S16`` keys (or any keys) -> DataComp subset array (sorted unique ``u8,u8``)."""
    return keys_to_pairs(normalize(keys))


def from_subset(pairs: np.ndarray) -> np.ndarray:
    """Any ``u8,u8`` array -> sorted unique keys."""
    return normalize(pairs_to_keys(pairs))
