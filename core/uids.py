"""uids and uid sets: the one place that decodes, sorts, combines and tests membership of uids.

A CommonPool uid is 32 lower-case hex characters. poolsieve holds it as its 16 decoded bytes
(``S16`` keys): byte order then equals numeric order, so sorting, dedup, the set operations and
membership run as fixed-width byte compares (far cheaper than compares of structured pairs), with no
integer arithmetic. A ``UidSet`` is a set of uids: sorted unique keys.

DataComp's subset files hold ``np.dtype("u8,u8")`` pairs ``(int(uid[:16], 16), int(uid[16:], 16))``;
those are the same 16 bytes read as two big-endian halves. ``keys_to_pairs`` / ``pairs_to_keys`` convert
at the file boundary (``core.formats.write_subset`` / ``read_subset``) and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError

UID_HEX_LEN = 32
KEY_DTYPE = np.dtype("S16")
SUBSET_DTYPE = np.dtype("u8,u8")  # DataComp's subset file format
_BIG_ENDIAN_PAIR = np.dtype(">u8,>u8")
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_BAD_UID = "a uid is 32 lowercase hex characters"


# ------------------------------------------------------------------------------ hex <-> keys
def is_valid_uid(uid: Any) -> bool:
    """A string of 32 lower-case hex characters (the same test as ``hex_to_keys``)."""
    if not isinstance(uid, str) or len(uid) != UID_HEX_LEN:
        return False
    raw = np.frombuffer(uid.encode("ascii", "replace"), dtype=np.uint8).reshape(1, UID_HEX_LEN)
    return not _decode(raw)[1][0]


def hex_to_keys(uids: Any, source: str | Path | None = None) -> np.ndarray:
    """uid strings (an arrow column, a numpy array or a sequence of str) -> ``S16`` keys, same order.

    Refuses, naming ``source`` and the first bad row, an arrow column that is not of string type, a
    missing uid, and a uid that is not 32 lower-case hex characters.
    """
    if type(uids).__module__.startswith("pyarrow"):
        raw = _arrow_bytes(uids, source)
        if raw is not None:
            keys, bad = _decode(raw)
            if not bad.any():
                return keys
        uids = _as_arrow(uids).to_numpy(zero_copy_only=False)  # some uid is bad: name the first one
    arr = np.asarray(uids)
    if arr.size == 0:
        return np.zeros(0, KEY_DTYPE)
    try:
        encoded = arr.astype("S33")
    except (UnicodeEncodeError, ValueError, TypeError):
        encoded = np.array([u.encode("ascii", "replace") if isinstance(u, str) else b"?" for u in arr], dtype="S33")
    raw = np.frombuffer(encoded.astype("S32").tobytes(), dtype=np.uint8).reshape(len(arr), UID_HEX_LEN)
    keys, bad = _decode(raw)
    bad |= np.char.str_len(encoded) != UID_HEX_LEN
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = arr[i].item() if isinstance(arr[i], np.generic) else arr[i]
        raise InputError(source, f"bad uid {value!r} at row {i}: {_BAD_UID}")
    return keys


def _decode(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 32)`` ASCII bytes -> (``S16`` keys, mask of rows that are not lower-case hex)."""
    nibbles = _HEX_VALUE[raw]
    keys = np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).view(KEY_DTYPE).reshape(len(raw))
    return keys, (nibbles == 255).any(axis=1)


def _as_arrow(column: Any) -> Any:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=pa.string())
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _arrow_bytes(column: Any, source: str | Path | None) -> np.ndarray | None:
    """The ``(n, 32)`` bytes of an arrow uid column read straight from its buffers (no Python strings);
    ``None`` when some uid is not 32 bytes long."""
    arr = _as_arrow(column)
    if len(arr) == 0:  # an empty column may carry any type (pandas writes ``null``)
        return np.zeros((0, UID_HEX_LEN), np.uint8)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        first = arr[0].as_py()
        raise InputError(source, f"column uid has type {arr.type} (row 0: {first!r}); "
                                 "a uid is a string of 32 lowercase hex characters")
    if arr.null_count:
        i = int(np.flatnonzero(pc.is_null(arr).to_numpy(zero_copy_only=False))[0])
        raise InputError(source, f"uid missing at row {i}")
    if not pc.all(pc.equal(pc.binary_length(arr), UID_HEX_LEN)).as_py():
        return None
    wide = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=wide)[arr.offset:arr.offset + len(arr) + 1]
    return np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(len(arr), UID_HEX_LEN)


def keys_to_hex(keys: np.ndarray) -> list[str]:
    """``S16`` keys -> 32-hex-char uid strings, same order."""
    text = np.ascontiguousarray(keys, dtype=KEY_DTYPE).tobytes().hex()
    return [text[i:i + UID_HEX_LEN] for i in range(0, len(text), UID_HEX_LEN)]


# ------------------------------------------------------------------- keys <-> DataComp's pairs
def keys_to_pairs(keys: np.ndarray) -> np.ndarray:
    """``S16`` keys -> DataComp's ``u8,u8`` pairs, same order (for writing a subset file)."""
    return np.ascontiguousarray(keys, dtype=KEY_DTYPE).view(_BIG_ENDIAN_PAIR).astype(SUBSET_DTYPE)


def pairs_to_keys(pairs: np.ndarray) -> np.ndarray:
    """DataComp's ``u8,u8`` pairs -> ``S16`` keys, same order (for reading a subset file)."""
    pairs = np.asarray(pairs)
    return np.ascontiguousarray(pairs.astype(_BIG_ENDIAN_PAIR)).view(KEY_DTYPE).reshape(len(pairs))


def uids_to_pairs(uids: Any, source: str | Path | None = None) -> np.ndarray:
    """uid strings -> ``u8,u8`` pairs, same order (a subset file's rows; ``hex_to_keys`` checks them)."""
    return keys_to_pairs(hex_to_keys(uids, source))


def pairs_to_uids(pairs: np.ndarray) -> list[str]:
    """``u8,u8`` pairs -> 32-hex-char uid strings, same order."""
    return keys_to_hex(pairs_to_keys(pairs))


# --------------------------------------------------------------------------- sorting, repeats
def sort_keys(keys: np.ndarray, unique: bool = True) -> np.ndarray:
    """Keys in numeric order, repeats dropped unless ``unique=False`` (a sort and one compare of neighbours:
    ``np.unique`` is much slower on ``S16``)."""
    keys = np.sort(np.asarray(keys, dtype=KEY_DTYPE))
    if unique and len(keys) > 1:
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
    return keys


def find_duplicates(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``keys`` whose uid is at an earlier row, and for each that first row (both by repeat row)."""
    empty = np.zeros(0, dtype=np.int64)
    keys = np.asarray(keys, dtype=KEY_DTYPE)
    if len(keys) < 2:
        return empty, empty
    order = np.argsort(keys, kind="stable")  # equal uids stay in row order: the first one leads its run
    ordered = keys[order]
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return empty, empty
    positions = np.arange(len(ordered))
    run_start = np.maximum.accumulate(np.where(np.r_[True, ~same], positions, 0))
    dup = np.flatnonzero(np.r_[False, same])
    repeats, firsts = order[dup], order[run_start[dup]]
    by_row = np.argsort(repeats, kind="stable")
    return repeats[by_row].astype(np.int64), firsts[by_row].astype(np.int64)


# ------------------------------------------------------------------------------------ UidSet
class UidSet:
    """A set of uids: ``keys``, sorted unique ``S16``. Filters return one; ``&``, ``|`` and ``-`` combine them."""

    __slots__ = ("keys",)

    def __init__(self, keys: np.ndarray | None = None, *, sorted_unique: bool = False):
        """Any keys (sorted and deduplicated here), or keys already sorted unique when ``sorted_unique``."""
        if keys is None:
            keys = np.zeros(0, KEY_DTYPE)
        self.keys = np.asarray(keys, dtype=KEY_DTYPE) if sorted_unique else sort_keys(keys)

    @classmethod
    def from_hex(cls, uids: Any, source: str | Path | None = None) -> UidSet:
        return cls(hex_to_keys(uids, source))

    @classmethod
    def from_pairs(cls, pairs: np.ndarray, *, sorted_unique: bool = False) -> UidSet:
        """From DataComp's ``u8,u8`` pairs (a validated subset file is ``sorted_unique``)."""
        return cls(pairs_to_keys(pairs), sorted_unique=sorted_unique)

    @classmethod
    def union_of(cls, sets: Iterable[UidSet]) -> UidSet:
        parts = [s.keys for s in sets]
        return cls(np.concatenate(parts)) if parts else cls()

    def to_pairs(self) -> np.ndarray:
        """DataComp's subset array: sorted unique ``u8,u8`` pairs."""
        return keys_to_pairs(self.keys)

    def to_hex(self) -> list[str]:
        return keys_to_hex(self.keys)

    def isin(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``keys`` (any order, repeats allowed) are in the set (binary search)."""
        keys = np.asarray(keys, dtype=KEY_DTYPE)
        if len(self.keys) == 0 or len(keys) == 0:
            return np.zeros(len(keys), dtype=bool)
        idx = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[idx] == keys

    def __and__(self, other: UidSet) -> UidSet:
        small, large = (self, other) if len(self) <= len(other) else (other, self)
        return UidSet(small.keys[large.isin(small.keys)], sorted_unique=True)

    def __or__(self, other: UidSet) -> UidSet:
        return UidSet.union_of([self, other])

    def __sub__(self, other: UidSet) -> UidSet:
        return UidSet(self.keys[~other.isin(self.keys)], sorted_unique=True)

    def __contains__(self, uid: str) -> bool:
        return bool(self.isin(hex_to_keys([uid]))[0])

    def __len__(self) -> int:
        return len(self.keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UidSet) and np.array_equal(self.keys, other.keys)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(self.to_hex() if len(self) <= 3 else [*keys_to_hex(self.keys[:3]), "..."])
        return f"UidSet({len(self)} uids: {head})"

