"""A run folder in DataComp's layout, and its checkpoints: written atomically, checked before a resume.

A run folder is what DataComp's ``evaluate.py --train_output_dir`` reads::

    checkpoints/epoch_latest.pt   the newest checkpoint; training resumes from it
    checkpoints/epoch_<N>.pt      the last epoch's checkpoint (every epoch's with keep_checkpoints)
    info.pkl                      DataComp's training record: scale, checkpoint, scale_config, data_dir
    params.txt, out.log           open_clip's flags and log

and an open_clip model folder (the layout of open_clip's hub repos), loadable without poolsieve::

    open_clip_config.json         {"model_cfg": the architecture's config, "preprocess_cfg": ...}
    open_clip_model.safetensors   the final weights

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:runs/NAME")

Checkpoints are untrusted input: they are read with ``weights_only=True`` (no pickled code runs).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.formats import atomic_path, write_json
from poolsieve.core.models import MODEL_CONFIG_DIR, read_checkpoint_state, register_model_configs

LATEST = "epoch_latest.pt"
INFO_FILE = "info.pkl"
OPEN_CLIP_CONFIG = "open_clip_config.json"  # the names open_clip's local-dir: / hf-hub: loading looks for
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


def atomic_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    """``torch.save`` that writes a file path through a temporary name, synced, then renamed into place."""
    import torch

    if not isinstance(f, (str, os.PathLike)):
        torch.save(obj, f, *args, **kwargs)
        return
    with atomic_path(f) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh, *args, **kwargs)
        fh.flush()
        os.fsync(fh.fileno())


def read_epoch(path: str | Path) -> int | None:
    """The epoch a training checkpoint ends, or None when the file is truncated or unreadable."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any failure to read is "not a whole checkpoint"
        return None
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    return epoch if isinstance(epoch, int) else None


def epoch_files(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """``(N, epoch_N.pt)`` in the folder, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _EPOCH_FILE.fullmatch(p.name))]
    return sorted(found)


def prepare_resume(checkpoint_dir: Path) -> tuple[int, str | None]:
    """Make ``epoch_latest.pt`` the newest whole checkpoint; return (its epoch, a one-line note or None).

    A truncated or unreadable latest file is moved aside (``epoch_latest.pt.unreadable``, never
    deleted) and the newest whole ``epoch_<N>.pt`` takes its place; a run killed between writing
    ``epoch_<N>.pt`` and ``epoch_latest.pt`` resumes from the newer of the two.
    """
    latest = checkpoint_dir / LATEST
    note = None
    latest_epoch = read_epoch(latest) if latest.exists() else None
    if latest.exists() and latest_epoch is None:
        bad = latest.with_name(LATEST + ".unreadable")
        os.replace(latest, bad)
        note = f"{latest}: truncated or unreadable checkpoint (kept as {bad.name})"
    best = next(((n, p) for n, p in reversed(epoch_files(checkpoint_dir))
                 if (latest_epoch is None or n > latest_epoch) and read_epoch(p) == n), None)
    if best is not None:
        with atomic_path(latest) as tmp:
            shutil.copyfile(best[1], tmp)
        latest_epoch = best[0]
        if note:
            note += f"; resuming from the previous whole one, {best[1].name}"
    elif note:
        note += "; no whole checkpoint before it, training starts over"
    return latest_epoch or 0, note


def info_model(arch: str, run_dir: Path) -> str:
    """``scale_config['model']`` of ``info.pkl``: the open_clip architecture name, or for poolsieve's own
    architectures (which an open_clip without poolsieve, e.g. DataComp's environment, does not know) the
    run folder as a ``local-dir:`` spec, which that open_clip loads (see ``write_open_clip_folder``)."""
    return f"local-dir:{run_dir.resolve()}" if (MODEL_CONFIG_DIR / f"{arch}.json").is_file() else arch


def write_info(run_dir: Path, scale: str, scale_config: dict[str, Any], data_dir: str) -> Path:
    """DataComp's ``info.pkl``: what its ``evaluate.py`` reads (``scale_config['model']``, ``checkpoint``).

    ``checkpoint`` is the absolute path, as DataComp writes it; a run folder copied elsewhere still
    works because evaluate.py falls back to ``<train_output_dir>/checkpoints/epoch_latest.pt``.
    """
    info = {"scale": scale, "checkpoint": (run_dir / "checkpoints" / LATEST).resolve(),
            "scale_config": scale_config, "data_dir": Path(data_dir)}
    path = run_dir / INFO_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(info, fh)
    return path


def write_open_clip_folder(run_dir: Path, arch: str, checkpoint: Path) -> Path:
    """Make ``run_dir`` an open_clip model folder: ``open_clip_config.json`` (``arch``'s config, with
    poolsieve's own configs registered, and the preprocessing open_clip trained with) and the
    checkpoint's weights as ``open_clip_model.safetensors``. Plain open_clip then loads the run with
    ``create_model_and_transforms("local-dir:RUN_DIR")``, and the folder can be pushed to a hub repo."""
    import open_clip
    from open_clip.transform import PreprocessCfg
    from safetensors.torch import save

    register_model_configs()
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise PoolsieveError(f"unknown open_clip architecture {arch!r}: cannot write {run_dir / OPEN_CLIP_CONFIG}")
    preprocess = asdict(PreprocessCfg())  # what open_clip_train's transforms used: defaults at the model's size
    preprocess["size"] = model_cfg["vision_cfg"].get("image_size", preprocess["size"])
    state = read_checkpoint_state(checkpoint)
    weights = run_dir / OPEN_CLIP_WEIGHTS
    with atomic_path(weights) as tmp:
        tmp.write_bytes(save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"}))
    write_json(run_dir / OPEN_CLIP_CONFIG, {"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    return weights
