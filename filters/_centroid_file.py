"""Reading a file of precomputed k-means centroids without running any code from it.

DataComp's ``image_based`` baseline ships its centroids (``{small,medium,large,xlarge}_centroids``) as
a ``torch.save``d numpy float32 array: a zip whose ``data.pkl`` is a pickle of the array. A pickle can
call any function it names, so ``torch.load(weights_only=True)`` refuses the file and
``weights_only=False`` would run whatever a tampered file carries. Here it is read by
``_pickled_arrays`` (an unpickler that admits only numpy arrays and plain torch tensors, nothing of
torch or numpy run): a file naming anything else, or holding anything but a finite 2-d float array,
is refused in one line before anything in it is called.

Accepted: ``torch.save`` zip files (torch >= 1.6) of a numpy array or a float tensor, plain pickles of
a numpy array, and ``.npy`` files (read with ``allow_pickle=False``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poolsieve.core.errors import InputError

from ._pickled_arrays import PickledArrays, TensorRef

MAX_BYTES = 8 * 2**30  # 100k x 768 float32 (DataComp small) is 0.3 GB; xlarge's 1.2 GB
WHAT = "centroid array"
FINITE_CHUNK = 1 << 16  # rows checked at a time


def read_centroids(path: str | Path) -> np.ndarray:
    """The centroids in ``path`` as a float32 ``(clusters, dim)`` array; see the module docstring."""
    with PickledArrays(path, WHAT, MAX_BYTES) as f:
        if not isinstance(f.value, (np.ndarray, TensorRef)):
            raise InputError(f.path, f"holds {type(f.value).__name__}, not a 2-d float array of centroids "
                                     "(clusters, dim)")
        array = f.array(f.value)
    check_rows(array, f.path, "centroids")
    return np.ascontiguousarray(array, dtype=np.float32)


def check_rows(array: np.ndarray | TensorRef, path: Path, what: str) -> None:
    """One line naming ``path`` unless ``array`` (or the tensor's shape and type, before it is read) is a 2-d
    float array with rows and columns, and, once read, finite."""
    if array.dtype.kind != "f" or len(array.shape) != 2 or 0 in array.shape:
        raise InputError(path, f"holds a {array.dtype} array of shape {tuple(array.shape)}, not a 2-d float "
                               f"array of {what} (rows, dim)")
    if isinstance(array, np.ndarray):
        for start in range(0, len(array), FINITE_CHUNK):
            if not np.isfinite(array[start:start + FINITE_CHUNK]).all():
                raise InputError(path, f"has {what} with NaN or infinite values")
