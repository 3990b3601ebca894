"""Loading open_clip models: an architecture name plus a pretrained tag or a local checkpoint path.

poolsieve's own small configs (``core/model_configs/*.json``, e.g. ``poolsieve-tiny``) are
registered with open_clip on import, in every process that loads a model (Ray workers too).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, PoolsieveError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make poolsieve's model configs known to open_clip (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True


@dataclass(frozen=True)
class ModelSpec:
    """``arch`` is an open_clip model name; ``pretrained`` a tag (``openai``, ``datacomp_xl_s13b_b90k``)
    or a path to a local checkpoint (open_clip's ``state_dict`` format); ``None`` means random weights."""

    arch: str
    pretrained: str | None = None

    @classmethod
    def parse(cls, value: Any) -> ModelSpec:
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            arch, _, pre = value.partition(":")
            return cls(arch, pre or None)
        if isinstance(value, dict) and "arch" in value:
            return cls(str(value["arch"]), value.get("pretrained"))
        raise PoolsieveError(f"a model is 'ARCH[:PRETRAINED_OR_PATH]' or {{arch, pretrained}}, got {value!r}")

    @property
    def is_local_checkpoint(self) -> bool:
        return bool(self.pretrained) and (Path(self.pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}
                                          or Path(self.pretrained).exists())


def load_model(spec: ModelSpec, device: str = "cpu", precision: str = "fp32"):
    """Return ``(model.eval(), preprocess, tokenizer)``; callers encode under ``torch.inference_mode()``.

    A local checkpoint that does not fit ``spec.arch`` raises an InputError naming the file and the
    first mismatching tensors instead of open_clip's long traceback.
    """
    import open_clip

    register_model_configs()
    if spec.arch not in open_clip.list_models():
        raise PoolsieveError(f"unknown open_clip architecture {spec.arch!r}")
    pretrained = spec.pretrained
    if spec.is_local_checkpoint:
        path = Path(pretrained)
        if not path.exists():
            raise InputError(path, "checkpoint file does not exist")
        with _quiet_root_logger():  # open_clip warns "no pretrained weights" before we load them
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=None,
                                                                         precision=precision, device=device)
        _load_local_checkpoint(model, path)
    else:
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=pretrained,
                                                                         precision=precision, device=device)
        except RuntimeError as e:
            raise PoolsieveError(f"cannot load {spec.arch} pretrained={pretrained!r}: {e}") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return model, preprocess, tokenizer


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _load_local_checkpoint(model: Any, path: Path) -> None:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise InputError(path, f"not a readable PyTorch checkpoint ({e})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise InputError(path, "checkpoint holds no state_dict")
    if next(iter(state), "").startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        detail = []
        if shape:
            k = shape[0]
            detail.append(f"{len(shape)} tensor(s) of another shape, e.g. {k}: checkpoint {tuple(state[k].shape)} "
                          f"vs model {tuple(own[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise InputError(path, f"checkpoint does not fit architecture {type(model).__name__} as named: "
                               + "; ".join(detail))
    model.load_state_dict(state)
