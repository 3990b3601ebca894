"""Spill folders: where an embedding filter keeps what does not fit its memory budget.

``spill_folder(pool, what)`` makes ``<workspace>/.poolsieve-spill-<what>-<random>`` (the workspace is
the folder every Ray node mounts, so workers on any node read and write there), records the owner
(host and process id) in it, and removes it when the filter ends, whether it succeeds or fails. A
folder that a killed run left behind is removed by the next filter run on the same host once its
owner process is gone.

``DiskArray`` is a ``.npy`` file in such a folder read by row ranges (``pread``) and by scattered rows
(a memory map closed before the call returns), and written the same ways: its pages never stay in a
process's resident memory, so a worker can walk a file far larger than its budget.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from poolsieve.core.formats import read_npy_header

from ._npz import NpzRows

PREFIX = ".poolsieve-spill-"
OWNER = "owner.json"


@contextlib.contextmanager
def spill_folder(pool, what: str) -> Iterator[Path]:
    """A new spill folder for filter ``what`` under the pool's spill root, removed on the way out."""
    root = pool.spill_root()
    _remove_abandoned(root)
    folder = root / f"{PREFIX}{what}-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=False, exist_ok=False)
    try:
        (folder / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_abandoned(root: Path) -> None:
    """Remove spill folders whose owner was a process of this host that no longer runs."""
    if not root.is_dir():
        return
    host = socket.gethostname()
    for folder in root.glob(f"{PREFIX}*"):
        try:
            owner = json.loads((folder / OWNER).read_text())
        except (OSError, ValueError):
            continue  # being made, or not ours to judge
        if not folder.is_symlink() and owner.get("host") == host and not _alive(int(owner.get("pid", 0))):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DiskArray:
    """A ``.npy`` file of a spill folder, read and written by rows without keeping pages resident."""
    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            shape, _, self.dtype = read_npy_header(f, self.path, "not a spill array")
            self.offset = f.tell()
        self.shape = tuple(shape)
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64))

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...], dtype, fill=None) -> DiskArray:
        """A new file of ``shape`` (zeros, or ``fill``)."""
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        if fill is not None:
            for lo in range(0, shape[0], 1 << 20):
                mm[lo:lo + (1 << 20)] = fill
        mm.flush()
        del mm
        return cls(path)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` (a fresh array)."""
        hi = min(hi, self.shape[0])
        lo = min(lo, hi)
        out = np.fromfile(self.path, dtype=self.dtype, count=(hi - lo) * self.row_items,
                          offset=self.offset + lo * self.row_items * self.dtype.itemsize)
        return out.reshape((hi - lo, *self.shape[1:]))

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        """``a[lo:hi]`` (a step-1 slice) or ``a[int array]``: a fresh array, as ``rows`` / ``take``."""
        if isinstance(index, slice):
            lo, hi, step = index.indices(self.shape[0])
            if step != 1:
                raise ValueError("DiskArray slices take no step")
            return self.rows(lo, hi)
        return self.take(index)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (any shape of int; a fresh array of ``index.shape + row shape``)."""
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0:
            return np.zeros((*index.shape, *self.shape[1:]), self.dtype)
        mm = self._map("r")
        try:
            return np.array(mm[index.ravel()]).reshape(*index.shape, *self.shape[1:])
        finally:
            del mm

    def write(self, index: np.ndarray | slice, values: np.ndarray) -> None:
        """Set rows ``index`` (int array or slice) to ``values``."""
        if self.shape[0] == 0:
            return
        mm = self._map("r+")
        try:
            mm[index] = values
            mm.flush()
        finally:
            del mm

    def _map(self, mode: str) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=self.offset, shape=self.shape)


def save(path: Path, array: np.ndarray) -> DiskArray:
    np.save(path, np.ascontiguousarray(array))
    return DiskArray(path)


def write_groups(path: Path, group: np.ndarray, n_groups: int, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Write the row-aligned ``arrays`` into ``path`` (an uncompressed ``.npz``) ordered by ``group`` (stable,
    so each group keeps row order), with ``offsets`` (``n_groups + 1``); return the rows per group."""
    group = np.asarray(group, dtype=np.int64)
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=n_groups).astype(np.int64)
    with open(path, "wb") as f:
        np.savez(f, offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                 **{name: np.asarray(a)[order] for name, a in arrays.items()})
    return counts


def read_groups(paths: list[Path], lo: int, hi: int, names: list[str]) -> dict[str, np.ndarray]:
    """The rows of groups ``lo:hi`` of every ``write_groups`` file in ``paths``, concatenated in that order.

    The output arrays are allocated once and filled file by file: the rows are held once, not twice
    (a list of parts and their concatenation)."""
    files = [NpzRows(path) for path in paths]
    spans = []
    for z in files:
        offsets = z.rows("offsets", lo, hi + 1)
        spans.append((int(offsets[0]), int(offsets[-1])))
    total = sum(b - a for a, b in spans)
    out: dict[str, np.ndarray] = {}
    for name in names:
        shape, dtype = _member_layout(files, name)
        out[name] = np.empty((total, *shape), dtype=dtype)
    at = 0
    for z, (a, b) in zip(files, spans, strict=True):
        for name in names:
            out[name][at:at + b - a] = z.rows(name, a, b)
        at += b - a
    return out


def _member_layout(files: list[NpzRows], name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Row shape and dtype of member ``name`` (the first file's; every file must agree)."""
    if not files:
        return (), np.dtype(np.float64)
    m = files[0].member(name)
    return tuple(m.shape[1:]), m.dtype
