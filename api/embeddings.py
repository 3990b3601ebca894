"""A subset's embeddings, read shard by shard from the row-aligned ``scores/{shard}.npz``: never the whole pool.

``np.savez`` stores each array of an ``.npz`` uncompressed, so an array is a plain ``.npy`` at a known
offset of the zip file. ``npz_array`` finds it (the zip's local header, then the ``.npy`` header: a
numeric dtype, two dimensions, the sizes adding up) and maps it read-only; only the pages of the rows
asked for are ever read, and each shard's mapping is dropped before the next one is opened. A member
that is compressed (an ``.npz`` written by ``np.savez_compressed``) is read whole, one shard at a time.

Rows are those of the pool's members (``status = 'success'``) whose uid is in the subset, in shard and
row order; every table's uids are checked (``core/uids.py``) and its embeddings must have one row per
table row.
"""

from __future__ import annotations

import mmap
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poolsieve.core.errors import InputError
from poolsieve.core.formats import STATUS_SUCCESS, read_npy_header
from poolsieve.core.uids import KEY_DTYPE, UidSet, hex_to_keys, keys_to_hex
from poolsieve.core.untrusted_files import open_regular

LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then the name and extra-field lengths
BATCH_ROWS = 65_536


@dataclass
class EmbeddingBatch:
    """Rows of one shard (``shard``; ``"*"`` for ``SubsetEmbeddings.load``): their uid keys and vectors."""

    shard: str
    keys: np.ndarray  # S16 uid keys, one per row
    vectors: np.ndarray  # (rows, dim), the stored dtype (fp16)

    @property
    def uids(self) -> list[str]:
        """The rows' uids as 32-hex-char strings."""
        return keys_to_hex(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def npz_array(npz: Path, key: str) -> np.ndarray:
    """Array ``key`` of ``npz``: a read-only memory map when stored uncompressed, else read (this file only)."""
    with open_regular(npz) as f:
        try:
            with zipfile.ZipFile(f) as z:
                names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
                if key not in names:
                    raise InputError(npz, f"missing embedding key {key}; has {', '.join(sorted(names)) or 'none'}")
                info = z.getinfo(f"{key}.npy")
                if info.compress_type != zipfile.ZIP_STORED:
                    with z.open(info) as member:
                        return _checked(npz, key, np.lib.format.read_array(member, allow_pickle=False))
        except (zipfile.BadZipFile, ValueError, EOFError) as e:
            raise InputError(npz, f"not a readable .npz file ({e})") from None
        shape, dtype, offset = _stored_layout(f, npz, key, info)
        if shape[0] == 0:
            return np.zeros(shape, dtype)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype, count=shape[0] * shape[1], offset=offset).reshape(shape)


def _stored_layout(f: Any, npz: Path, key: str, info: zipfile.ZipInfo) -> tuple[tuple[int, int], np.dtype, int]:
    """(shape, dtype, byte offset in the file) of an uncompressed ``.npy`` member, every size checked."""
    f.seek(info.header_offset)
    head = f.read(LOCAL_HEADER.size)
    if len(head) != LOCAL_HEADER.size or LOCAL_HEADER.unpack(head)[0] != b"PK\x03\x04":
        raise InputError(npz, f"not a readable .npz file (bad zip header of {key})")
    _, name_len, extra_len = LOCAL_HEADER.unpack(head)
    start = info.header_offset + LOCAL_HEADER.size + name_len + extra_len
    f.seek(start)
    shape, fortran, dtype = read_npy_header(f, npz, f"embedding {key} is not a readable .npy")
    _check_kind(npz, key, shape, dtype, fortran)
    offset = f.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + nbytes != info.file_size or start + info.file_size > f.seek(0, 2):
        raise InputError(npz, f"embedding {key}: its .npy header says {shape} {dtype}, the file holds another size")
    return (int(shape[0]), int(shape[1])), dtype, offset


def _check_kind(npz: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, fortran: bool = False) -> None:
    if dtype.hasobject or dtype.kind not in "fiu" or fortran:
        raise InputError(npz, f"embedding {key} has dtype {dtype}{' (Fortran order)' if fortran else ''}; "
                              "expected a numeric (rows, dim) array")
    if len(shape) != 2:
        raise InputError(npz, f"embedding {key} has shape {shape}, expected (rows, dim)")


def _checked(npz: Path, key: str, array: np.ndarray) -> np.ndarray:
    _check_kind(npz, key, array.shape, array.dtype)
    return array


class SubsetEmbeddings:
    """The ``key`` embeddings (``b32_img``, ``l14_txt``, ...) of the members in ``subset`` (every member when
    ``None``), over score tables ``tables``. Iterate ``batches()``, or ``load()`` them into one array."""

    def __init__(self, tables: Sequence[Path], key: str, subset: UidSet | None = None):
        self.tables = [Path(t) for t in tables]
        self.key = key
        self.subset = subset

    def rows(self, table: Path) -> tuple[np.ndarray, np.ndarray, int]:
        """(row numbers, uid keys) of the chosen rows of ``table``, and its row count."""
        with open_regular(table) as f:
            try:
                parquet = pq.ParquetFile(f)
                names = parquet.schema_arrow.names
                data = parquet.read(columns=["uid", "status"] if "status" in names else ["uid"])
            except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
                raise InputError(table, f"not a readable parquet score table ({e})") from None
        keys = hex_to_keys(data["uid"], source=table)
        chosen = np.ones(len(keys), bool) if self.subset is None else self.subset.isin(keys)
        if "status" in data.column_names:
            chosen &= pc.fill_null(pc.equal(data["status"], STATUS_SUCCESS), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(chosen)
        return rows, keys[rows], len(keys)

    def _table_vectors(self, table: Path, n_rows: int) -> np.ndarray:
        npz = table.with_suffix(".npz")
        array = npz_array(npz, self.key)
        if array.shape[0] != n_rows:
            raise InputError(npz, f"embedding {self.key} has {array.shape[0]} rows but the score table has "
                                  f"{n_rows}: misaligned")
        return array

    def batches(self, rows: int = BATCH_ROWS) -> Iterator[EmbeddingBatch]:
        """The chosen rows, at most ``rows`` per batch, shard by shard (one shard mapped at a time)."""
        for table in self.tables:
            picked, keys, n_rows = self.rows(table)
            if not len(picked):
                continue
            array = self._table_vectors(table, n_rows)
            for lo in range(0, len(picked), rows):
                yield EmbeddingBatch(table.stem, keys[lo:lo + rows], np.take(array, picked[lo:lo + rows], axis=0))
            del array  # drop the mapping before the next shard's

    def load(self) -> EmbeddingBatch:
        """Every chosen row in one array (sized first, then filled shard by shard: no second copy)."""
        plans = [(table, *self.rows(table)) for table in self.tables]
        total = sum(len(p[1]) for p in plans)
        keys = np.empty(total, KEY_DTYPE)
        vectors: np.ndarray | None = None
        at = 0
        for table, picked, table_keys, n_rows in plans:
            if not len(picked):
                continue
            array = self._table_vectors(table, n_rows)
            if vectors is None:
                vectors = np.empty((total, array.shape[1]), array.dtype)
            if array.shape[1:] != vectors.shape[1:] or array.dtype != vectors.dtype:
                raise InputError(table.with_suffix(".npz"), f"embedding {self.key} is {array.dtype} "
                                 f"{array.shape[1:]}, other shards' {vectors.dtype} {vectors.shape[1:]}")
            np.take(array, picked, axis=0, out=vectors[at:at + len(picked)])
            keys[at:at + len(picked)] = table_keys
            at += len(picked)
            del array
        return EmbeddingBatch("*", keys, vectors if vectors is not None else np.zeros((0, 0), np.float16))
