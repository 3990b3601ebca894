"""Reading a file of precomputed k-means centroids without running any code from it.

DataComp's ``image_based`` baseline ships its centroids (``{small,medium,large,xlarge}_centroids``) as
a ``torch.save``d numpy float32 array: a zip whose ``data.pkl`` is a pickle of the array. A pickle can
call any function it names, so ``torch.load(weights_only=True)`` refuses the file and
``weights_only=False`` would run whatever a tampered file carries. Here the pickle is read by an
unpickler that resolves only numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``,
and ``_codecs.encode``, with which protocol 2 carries the array's bytes) and has no persistent ids (no torch storages): a file naming anything else, or holding anything but
a finite 2-d float array, is refused in one line before anything in it is called.

Accepted: ``torch.save`` zip files (torch >= 1.6), plain pickles of a numpy array, and ``.npy`` files
(read with ``allow_pickle=False``).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.untrusted_files import open_regular

ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # pickle protocol 2 (torch.save's) carries the array's bytes as a latin-1 string
}
MAX_BYTES = 8 * 2**30  # 100k x 768 float32 (DataComp small) is 0.3 GB; xlarge's 1.2 GB


class _ArrayOnly(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise InputError(self.path, f"is not a plain centroid array: its pickle names {module}.{name}, "
                                        "which poolsieve never loads (only numpy arrays are read)")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise InputError(self.path, "holds torch tensors or storages, not a numpy centroid array "
                                    "(save it with torch.save(array.numpy()) or np.save)")


def read_centroids(path: str | Path) -> np.ndarray:
    """The centroids in ``path`` as a float32 ``(clusters, dim)`` array; see the module docstring."""
    path = Path(path).expanduser()
    with open_regular(path) as f:
        head = f.read(6)
        f.seek(0, 2)
        size = f.tell()
        if size > MAX_BYTES:
            raise InputError(path, f"is {size:,} bytes, more than a centroid file of {MAX_BYTES:,}")
        f.seek(0)
        if head.startswith(b"\x93NUMPY"):
            try:
                array = np.load(f, allow_pickle=False)
            except ValueError as e:
                raise InputError(path, f"not a plain numeric .npy array ({e})") from None
        else:
            array = _unpickle(f.read(), path, zipped=head.startswith(b"PK"))
    return _checked(array, path)


def _unpickle(data: bytes, path: Path, zipped: bool) -> object:
    if zipped:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if len(names) != 1:
                    raise InputError(path, "is a zip without the one data.pkl of a torch.save file")
                data = z.read(names[0])
        except zipfile.BadZipFile as e:
            raise InputError(path, f"is not a readable torch.save file ({e})") from None
    try:
        return _ArrayOnly(data, path).load()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - anything else a malformed pickle raises is bad input
        raise InputError(path, f"is not a readable pickled centroid array ({type(e).__name__}: {e})") from None


def _checked(array: object, path: Path) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f" or array.ndim != 2 or 0 in array.shape:
        what = f"a {array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise InputError(path, f"holds {what}, not a 2-d float array of centroids (clusters, dim)")
    if not np.isfinite(array).all():
        raise InputError(path, "has centroids with NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)
