"""image_based's target set from files: DataComp's ImageNet-1k L/14 image features, read without running code.

DataComp's ``image_based`` takes its target set from ``in1k_clip_vit_l14_{0..4}.pt`` (each
``torch.save({"image_features": tensor})``, concatenated in the order 0..4; ``poolsieve fetch-assets``
fetches them). Besides a reference set (a name: ``references/NAME.npz``; or a path ending in ``.npz``,
read by ``_embeddings``), ``target`` may name such files:

| target | files read, in this order |
| --- | --- |
| a folder (written with a ``/``: ``assets/``) | its ``in1k_clip_vit_l14_{0..4}.pt``, all five (DataComp's) |
| a glob (``assets/in1k_clip_vit_l14_*.pt``) | the files it matches, by the numbers in their names |
| a list (``[a.pt, b.pt]``) | the files as listed |
| a path (with a ``/``, or ending in ``.pt``, ``.pth``, ``.pkl`` or ``.npy``) | that file |

Each file holds a dict with ``image_features`` (DataComp's; other keys are ignored) or a bare array: a
2-d float torch tensor or numpy array, read by ``_pickled_arrays`` (no code in the file runs; anything
else is refused in one line naming the file). The parts, all of one width, are read into one array
allocated once, in their own dtype (float32 when they differ).
"""

from __future__ import annotations

import contextlib
import glob
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from poolsieve.core.errors import ConfigError, InputError

from ._centroid_file import check_rows
from ._pickled_arrays import PickledArrays, TensorRef

DATACOMP_PARTS = [f"in1k_clip_vit_l14_{i}.pt" for i in range(5)]
FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".npy")
FEATURES_KEY = "image_features"
MAX_BYTES = 4 * 2**30  # a part of DataComp's 1.28M x 768 target is about 0.4-0.8 GB
WHAT = "target array"


def target_files(target: object) -> list[Path] | None:
    """The files ``target`` names, in the order they are read; None when it names a reference set."""
    if isinstance(target, (list, tuple)):
        if not target or not all(isinstance(t, (str, Path)) for t in target):
            raise ConfigError(f"image_based: a target list names one or more files, got {target!r}")
        return [Path(t).expanduser() for t in target]
    if not isinstance(target, (str, Path)):
        raise ConfigError(f"image_based: target is a reference name, a path, a folder, a glob or a list of files, "
                          f"got {target!r}")
    text = str(target)
    if text.endswith(".npz"):
        return None
    if glob.has_magic(text):
        matches = sorted(glob.glob(str(Path(text).expanduser())), key=_numbers_in_order)
        if not matches:
            raise InputError(text, "matches no file (DataComp's targets: poolsieve fetch-assets "
                                   "in1k_clip_vit_l14_{0..4} --dest FOLDER)")
        return [Path(m) for m in matches]
    path = Path(text).expanduser()
    if "/" in text or text.startswith("~") or text.endswith(FILE_SUFFIXES):
        return datacomp_parts(path) if path.is_dir() else [path]
    return None


def datacomp_parts(folder: Path) -> list[Path]:
    """DataComp's five target files in ``folder``, 0..4; one line naming those missing."""
    missing = [name for name in DATACOMP_PARTS if not (folder / name).exists()]
    if missing:
        what = "holds none" if len(missing) == len(DATACOMP_PARTS) else f"lacks {', '.join(missing)}"
        raise InputError(folder, f"{what} of DataComp's target files in1k_clip_vit_l14_{{0..4}}.pt (poolsieve "
                                 f"fetch-assets in1k_clip_vit_l14_{{0..4}} --dest {folder})")
    return [folder / name for name in DATACOMP_PARTS]


def _numbers_in_order(name: str) -> list:
    """Sort key: digits compared as numbers (``_10`` after ``_9``), the rest as text."""
    return [(int(t), "") if t.isdigit() else (-1, t) for t in re.split(r"(\d+)", name)]


def read_target_files(paths: Sequence[Path]) -> np.ndarray:
    """The image features of ``paths``, concatenated in order into one ``(rows, dim)`` float array."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(PickledArrays(p, WHAT, MAX_BYTES)) for p in paths]
        parts = [_features(f) for f in files]
        for f, part in zip(files, parts, strict=True):
            check_rows(part, f.path, "image features")
            if part.shape[1] != parts[0].shape[1]:
                raise InputError(f.path, f"holds {part.shape[1]}-d image features but {files[0].path} holds "
                                         f"{parts[0].shape[1]}-d: not parts of one target set")
        dtypes = {part.dtype.newbyteorder("=") for part in parts}
        out = np.empty((sum(p.shape[0] for p in parts), parts[0].shape[1]),
                       dtypes.pop() if len(dtypes) == 1 else np.float32)
        row = 0
        for f, part in zip(files, parts, strict=True):
            check_rows(f.array(part, out[row:row + part.shape[0]]), f.path, "image features")
            row += part.shape[0]
    return out


def _features(f: PickledArrays) -> np.ndarray | TensorRef:
    value = f.value
    if isinstance(value, dict) and FEATURES_KEY in value:
        value = value[FEATURES_KEY]
    if not isinstance(value, (np.ndarray, TensorRef)):
        raise InputError(f.path, f"holds {type(value).__name__}, not image features: DataComp's "
                                 f"{{'{FEATURES_KEY}': tensor}} or a 2-d array")
    return value
