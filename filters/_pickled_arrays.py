"""Reading the arrays in a pickle file (a plain pickle or a ``torch.save`` zip) without running any code.

DataComp's ``image_based`` inputs are pickles: its centroids a ``torch.save``d numpy array, its
ImageNet-1k targets ``torch.save({"image_features": tensor})``. A pickle can call any function it
names, so it is read here by an unpickler that resolves only

* numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``, and ``_codecs.encode``, with
  which protocol 2 carries an array's bytes);
* torch's plain tensor (``torch._utils._rebuild_tensor_v2``, an empty ``collections.OrderedDict`` of
  hooks, and a floating-point storage class such as ``torch.HalfStorage``), replaced by numpy
  stand-ins: torch is never imported and nothing of torch's runs. A tensor comes back as a
  ``TensorRef`` (where its bytes are in the zip, its shape and strides, bounds checked); ``array``
  reads it into a numpy array, optionally straight into a slice of a larger one.

Everything else is plain pickle data (dicts, lists, tuples, numbers, strings). A file naming any other
global, or whose tensors point outside their storage, is refused in one line (``InputError``) before
anything in it is called. ``.npy`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.untrusted_files import open_regular

NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # pickle protocol 2 (torch.save's) carries an array's bytes as a latin-1 string
}
# torch's floating-point storage classes -> numpy dtype (bfloat16 is read as uint16 and widened to float32)
STORAGES = {"HalfStorage": np.dtype(np.float16), "FloatStorage": np.dtype(np.float32),
            "DoubleStorage": np.dtype(np.float64), "BFloat16Storage": np.dtype(np.uint16)}
REBUILD = ("torch._utils", "_rebuild_tensor_v2")
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError, EOFError)
HOOKS = ("collections", "OrderedDict")


@dataclass(frozen=True)
class _Storage:
    member: str  # zip member holding its bytes
    dtype: np.dtype
    numel: int
    bfloat16: bool


@dataclass(frozen=True)
class TensorRef:
    """A tensor of a ``torch.save`` zip, not read yet: a strided view of a storage (bounds checked)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.storage.bfloat16 else self.storage.dtype


@dataclass(frozen=True)
class _StorageClass:
    name: str


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path, what: str, members: dict[str, int] | None, prefix: str,
                 byteorder: str):
        super().__init__(io.BytesIO(data))
        self.path, self.what, self.members, self.prefix, self.order = path, what, members, prefix, byteorder

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NUMPY_GLOBALS:
            return super().find_class(module, name)
        if self.members is not None:
            if (module, name) == REBUILD:
                return self.rebuild
            if (module, name) == HOOKS:
                return dict
            if module == "torch" and name in STORAGES:
                return _StorageClass(name)
            if module == "torch" and name.endswith("Storage"):
                raise InputError(self.path, f"holds a tensor of torch.{name}: only float tensors are read")
        raise InputError(self.path, f"is not a plain {self.what}: its pickle names {module}.{name}, which poolsieve "
                                    "never loads (only numpy arrays and torch tensors are read)")

    def persistent_load(self, pid: Any) -> _Storage:
        if self.members is None:
            raise InputError(self.path, f"is not a plain {self.what}: a pickle outside a torch.save zip refers to "
                                        "storages it does not hold")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageClass) and isinstance(pid[2], str) and type(pid[4]) is int):
            raise InputError(self.path, f"is not a plain {self.what}: an unknown persistent id {str(pid)[:80]!r}")
        kind, key, numel = pid[1].name, pid[2], pid[4]
        bfloat16 = kind == "BFloat16Storage"
        dtype = STORAGES[kind].newbyteorder("<" if self.order == "little" else ">")
        member = f"{self.prefix}data/{key}"
        if self.members.get(member) != numel * dtype.itemsize or numel < 0:
            raise InputError(self.path, f"storage {key[:40]!r} is not the {numel} {kind} values its pickle declares")
        return _Storage(member, dtype, numel, bfloat16)

    def rebuild(self, storage: Any, offset: Any, shape: Any, strides: Any, requires_grad: Any = False,
                hooks: Any = None, metadata: Any = None) -> TensorRef:
        """``_rebuild_tensor_v2``'s arguments checked: a dense view inside its storage, no hooks or metadata."""
        ints = (isinstance(shape, tuple) and isinstance(strides, tuple) and len(shape) == len(strides)
                and all(type(v) is int and v >= 0 for v in (offset, *shape, *strides)))
        if not isinstance(storage, _Storage) or not ints or hooks or metadata or not isinstance(requires_grad, bool):
            raise InputError(self.path, f"is not a plain {self.what}: a tensor with arguments poolsieve does not read")
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) if all(shape) else offset - 1
        if last >= storage.numel:
            raise InputError(self.path, f"a tensor of shape {shape} reaches past its storage of {storage.numel} values")
        return TensorRef(storage, offset, shape, strides)


class PickledArrays:
    """A pickle, ``torch.save`` zip or ``.npy`` file opened for its arrays; ``value`` is what it holds
    (arrays as numpy arrays or ``TensorRef``). Use as a context manager; ``array`` reads a tensor."""

    def __init__(self, path: str | Path, what: str, max_bytes: int):
        self.path, self.what = Path(path).expanduser(), what
        self.file: IO[bytes] = open_regular(self.path)
        self.zip: zipfile.ZipFile | None = None
        try:
            self.value = self._load(max_bytes)
        except BaseException:
            self.close()
            raise

    def _load(self, max_bytes: int) -> object:
        f = self.file
        head = f.read(6)
        size = f.seek(0, 2)
        if size > max_bytes:
            raise InputError(self.path, f"is {size:,} bytes, more than the {max_bytes:,} poolsieve reads as a {self.what}")
        f.seek(0)
        if head.startswith(b"\x93NUMPY"):
            try:
                return np.load(f, allow_pickle=False)
            except ValueError as e:
                raise InputError(self.path, f"not a plain numeric .npy array ({e})") from None
        if not head.startswith(b"PK"):
            return self._unpickle(f.read(), None, "", "little")
        try:
            self.zip = zipfile.ZipFile(f)
            names = [n for n in self.zip.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise InputError(self.path, "is a zip without the one data.pkl of a torch.save file")
            prefix = names[0][:-len("data.pkl")]
            members = {i.filename: i.file_size for i in self.zip.infolist()}
            if sum(members.values()) > max_bytes:
                raise InputError(self.path, f"unpacks to more than the {max_bytes:,} bytes poolsieve reads as a {self.what}")
            order = self.zip.read(prefix + "byteorder").decode() if prefix + "byteorder" in members else "little"
            if order not in ("little", "big"):
                raise InputError(self.path, f"has an unknown byte order {order[:20]!r}")
            return self._unpickle(self.zip.read(names[0]), members, prefix, order)
        except (*_ZIP_ERRORS, UnicodeDecodeError) as e:
            raise InputError(self.path, f"is not a readable torch.save file ({e})") from None

    def _unpickle(self, data: bytes, members: dict[str, int] | None, prefix: str, order: str) -> object:
        try:
            return _Unpickler(data, self.path, self.what, members, prefix, order).load()
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - anything else a malformed pickle raises is bad input
            raise InputError(self.path, f"is not a readable pickled {self.what} ({type(e).__name__}: {e})") from None

    def array(self, item: np.ndarray | TensorRef, out: np.ndarray | None = None) -> np.ndarray:
        """``item`` (an array or a tensor of this file) as a numpy array, written into ``out`` when given
        (of ``item``'s shape: a slice of a larger array); a tensor's bytes are read from the zip here."""
        if isinstance(item, TensorRef):
            view = self._tensor_view(item)
            return np.array(view, dtype=view.dtype.newbyteorder("=")) if out is None else _fill(out, view)
        return np.asarray(item, dtype=item.dtype.newbyteorder("=")) if out is None else _fill(out, item)

    def _tensor_view(self, ref: TensorRef) -> np.ndarray:
        """A read-only view of ``ref`` over its storage's bytes (bfloat16 widened to float32)."""
        if self.zip is None:
            raise InputError(self.path, "refers to a tensor outside a torch.save zip")
        try:
            flat = np.frombuffer(self.zip.read(ref.storage.member), dtype=ref.storage.dtype)
        except _ZIP_ERRORS as e:
            raise InputError(self.path, f"is not a readable torch.save file ({e})") from None
        view = np.lib.stride_tricks.as_strided(flat[ref.offset:], ref.shape, [s * flat.itemsize for s in ref.strides],
                                               writeable=False)
        return _widen_bfloat16(view) if ref.storage.bfloat16 else view

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
        self.file.close()

    def __enter__(self) -> PickledArrays:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fill(out: np.ndarray, values: np.ndarray) -> np.ndarray:
    out[...] = values
    return out


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values (as uint16) -> float32: the same number, its 16 bits as a float32's high half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
