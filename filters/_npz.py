"""Rows of the arrays in an ``.npz`` without loading whole members: the embedding files, and spill files.

``np.savez`` (how ``score`` writes ``scores/{shard}.npz``) stores each member uncompressed, as a
``.npy`` file inside a zip. For such a member the data lies at a fixed offset of the ``.npz`` file,
so a range of rows is one ``pread`` and scattered rows come from a memory map that is closed again
before the call returns: neither stays in the process's resident memory. A compressed member
(``np.savez_compressed``) is read whole, once, on first use.

The file is untrusted: it is opened only if it is a regular file (``core/untrusted_files``), the
member's header is parsed by numpy's reader (no pickles: an object dtype is refused), and its
declared shape must fit inside the member; anything else is bad input naming the file.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.formats import read_npy_header
from poolsieve.core.untrusted_files import open_regular

LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header (30 bytes)
LOCAL_MAGIC = b"PK\x03\x04"


@dataclass
class Member:
    """One member's array: shape, dtype, and where its data starts in the file (None: compressed)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int | None

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


class NpzRows:
    """The members of one ``.npz``, read by rows. ``names`` lists them; see the module docstring."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._loaded: dict[str, np.ndarray] = {}
        try:
            with open_regular(self.path) as f:
                size = os.fstat(f.fileno()).st_size
                with zipfile.ZipFile(f) as z:
                    self.members = {info.filename[:-4]: self._member(f, z, info, size)
                                    for info in z.infolist() if info.filename.endswith(".npy")}
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise InputError(self.path, f"not a readable .npz file ({e})") from None

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def _member(self, f, z: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> Member:
        if info.compress_type != zipfile.ZIP_STORED:
            with z.open(info) as m:
                shape, dtype = _header(m, self.path, info.filename)
            return Member(shape, dtype, None)
        f.seek(info.header_offset)
        fields = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
        if fields[0] != LOCAL_MAGIC:
            raise InputError(self.path, f"member {info.filename} has no zip header where the directory says")
        start = info.header_offset + LOCAL_HEADER.size + fields[-2] + fields[-1]
        f.seek(start)
        shape, dtype = _header(f, self.path, info.filename)
        offset = f.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset - start + nbytes > info.file_size or offset + nbytes > size:
            raise InputError(self.path, f"member {info.filename} declares shape {shape}, larger than the member")
        return Member(shape, dtype, offset)

    def member(self, name: str) -> Member:
        if name not in self.members:
            raise InputError(self.path, f"missing embedding key {name}; has {', '.join(self.members) or 'none'}")
        return self.members[name]

    def rows(self, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows ``lo:hi`` of member ``name`` (a fresh array)."""
        m = self.member(name)
        n = m.shape[0] if m.shape else 0
        hi = n if hi is None else min(hi, n)
        lo = min(max(lo, 0), hi)
        if m.offset is None:
            return np.array(self._whole(name)[lo:hi])
        count = (hi - lo) * (m.row_bytes // m.dtype.itemsize)
        out = np.fromfile(self.path, dtype=m.dtype, count=count, offset=m.offset + lo * m.row_bytes)
        return out.reshape((hi - lo, *m.shape[1:]))

    def take(self, name: str, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` of member ``name`` (any order; a fresh array), through a short-lived memory map."""
        m = self.member(name)
        index = np.asarray(index, dtype=np.int64)
        if m.offset is None:
            return np.array(self._whole(name)[index])
        if len(index) == 0:
            return np.zeros((0, *m.shape[1:]), m.dtype)
        mm = np.memmap(self.path, dtype=m.dtype, mode="r", offset=m.offset, shape=m.shape)
        try:
            return np.array(mm[index])
        finally:
            del mm

    def _whole(self, name: str) -> np.ndarray:
        if name not in self._loaded:
            with open_regular(self.path) as f, np.load(f, allow_pickle=False) as z:
                self._loaded[name] = z[name]
        return self._loaded[name]


def _header(f, path: Path, member: str) -> tuple[tuple[int, ...], np.dtype]:
    shape, fortran, dtype = read_npy_header(f, path, f"member {member} is not a .npy array")
    if dtype.hasobject or fortran or any(s < 0 for s in shape):
        raise InputError(path, f"member {member} is an object or Fortran-ordered array; only plain C-ordered "
                               "numeric arrays are read")
    return tuple(int(s) for s in shape), dtype
