"""A subset's two files change together or not at all: ``subsets/NAME.npy`` and its record ``NAME.json``.

The record names the sha256 and row count of the ``.npy`` it describes. ``write_subset_pair`` writes the
record first and the ``.npy`` second, each to a temporary name renamed into place, so a run killed at
any point leaves either both old files, both new ones, or a record that does not describe the ``.npy``
beside it; never a pair that looks whole but is not. Readers check the pair (``check_subset_record``):
the filter stage remakes a pair that does not match, reshard and submit refuse it in one line.

``read_subset_snapshot`` reads a subset file once: the pairs, the sha256 and the record checked against
those very bytes, so a file replaced while it is read cannot be half old and half new.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .formats import (
    atomic_path,
    file_sha256,
    read_json,
    read_npy_header,
    validate_subset,
    write_json,
    write_subset,
)
from .uids import SUBSET_DTYPE, UidSet

SHA256_KEY = "npy_sha256"


def record_path(npy: str | Path) -> Path:
    return Path(npy).with_suffix(".json")


def write_subset_pair(npy: str | Path, uids: UidSet | np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
    """Write subset file ``npy`` (a ``UidSet``, or ``u8,u8`` pairs) and its record (``record`` plus the file's
    ``count`` and sha256); return the record."""
    npy = Path(npy)
    with atomic_path(npy) as tmp:
        write_subset(tmp, uids)
        rows = int(np.load(tmp, mmap_mode="r", allow_pickle=False).shape[0])
        record = {**record, "count": rows, SHA256_KEY: file_sha256(tmp)}
        write_json(record_path(npy), record)  # first: until the .npy lands, the record matches no file
    return record


def _mismatch(npy: Path, why: str) -> InputError:
    return InputError(npy, f"does not match its record {record_path(npy).name} ({why}: a run was interrupted "
                           "or another one wrote it); remake it with `poolsieve filter --overwrite`")


def check_subset_record(npy: str | Path, sha256: str | None = None) -> dict[str, Any] | None:
    """The record of subset file ``npy`` (``None`` when it has none); InputError if they do not belong together.

    ``sha256``: the digest of the ``.npy`` bytes the caller already read (else the file is hashed).
    """
    npy = Path(npy)
    info = record_path(npy)
    if not info.exists():
        return None
    record = read_json(info)
    if not isinstance(record, dict):
        raise InputError(info, f"a subset record is a JSON object, got {type(record).__name__}")
    if not npy.exists():
        raise InputError(npy, f"is missing but {info.name} describes it (an interrupted run?); "
                              "remake it with `poolsieve filter --overwrite`")
    expected = record.get(SHA256_KEY)
    if not isinstance(expected, str):
        raise _mismatch(npy, f"its record names no {SHA256_KEY}")
    if (sha256 or file_sha256(npy)) != expected:
        raise _mismatch(npy, "its sha256 differs")
    return record


@dataclass(frozen=True)
class SubsetSnapshot:
    """One read of a subset file: its exact bytes, their sha256, the pairs they hold and the checked record."""

    path: Path
    data: bytes
    sha256: str
    pairs: np.ndarray
    record: dict[str, Any] | None

    def write_copy(self, dest: str | Path) -> None:
        """Write exactly the bytes that were read (atomically)."""
        with atomic_path(dest) as tmp:
            tmp.write_bytes(self.data)


def read_subset_snapshot(path: str | Path, *, allow_repeats: bool = False) -> SubsetSnapshot:
    """Read subset file ``path`` once; validate it (dtype, 1-d, sorted, unique unless ``allow_repeats``) and
    check its record. Nothing is unpickled; the pairs are a read-only view of the bytes (no second copy)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "subset file does not exist") from None
    except OSError as e:
        raise InputError(path, f"cannot read the subset file ({e.strerror})") from None
    pairs = _parse_npy(data, path)
    validate_subset(pairs, path, allow_repeats=allow_repeats)
    digest = hashlib.sha256(data).hexdigest()
    return SubsetSnapshot(path, data, digest, pairs, check_subset_record(path, digest))


def subset_rows(path: str | Path) -> int:
    """Rows of subset file ``path`` from its header alone (dtype and shape checked; nothing unpickled)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            shape, offset = _read_header(f, path)
            size = f.seek(0, io.SEEK_END)
    except FileNotFoundError:
        raise InputError(path, "subset file does not exist") from None
    _check_size(path, shape[0], size - offset)
    return shape[0]


def _parse_npy(data: bytes, path: Path) -> np.ndarray:
    """The array of ``.npy`` bytes of the subset dtype, as a view; the header is checked before any data."""
    f = io.BytesIO(data)
    shape, offset = _read_header(f, path)
    _check_size(path, shape[0], len(data) - offset)
    return np.frombuffer(data, SUBSET_DTYPE, count=shape[0], offset=offset)


def _read_header(f: Any, path: Path) -> tuple[tuple[int, ...], int]:
    """Shape and data offset of a ``.npy`` whose dtype is the subset dtype (InputError otherwise)."""
    shape, _fortran, dtype = read_npy_header(f, path, "not a readable .npy file")
    if dtype != SUBSET_DTYPE:
        raise InputError(path, f"subset dtype is {dtype}, expected {SUBSET_DTYPE} (DataComp's uid format)")
    if len(shape) != 1:
        raise InputError(path, f"subset must be one-dimensional, got shape {shape}")
    return shape, f.tell()


def _check_size(path: Path, rows: int, data_bytes: int) -> None:
    if data_bytes != rows * SUBSET_DTYPE.itemsize:
        raise InputError(path, f"truncated or padded .npy: {data_bytes} data bytes for {rows} uids")
