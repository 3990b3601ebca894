"""Where model and array work runs: the one resolver of devices and precisions.

``resolve_device("auto")`` is ``cuda`` when torch sees a GPU, else ``cpu``; an explicit ``cuda`` (or
``cuda:N``) without a GPU is a one-line ``ConfigError``. ``resolve_precision("auto", device)`` picks the
GPU default (bf16 for inference unless the caller names another, e.g. ``amp`` for open_clip training) on
CUDA and fp32 on CPU. Torch is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import os
import re
import sys

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU. On a Linux machine without NVIDIA's kernel driver (no
    ``/proc/driver/nvidia``) no GPU can be seen: the answer comes without importing torch, which alone
    takes about 0.7 GiB of a process's memory (an embedding filter's working set, on a small budget)."""
    if "torch" not in sys.modules and sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia"):
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str | None = "auto", *, who: str = "device") -> str:
    """``auto`` -> ``cuda`` if torch sees a GPU else ``cpu``; ``cuda[:N]`` without a GPU is a ConfigError.
    ``who`` names the option in the message (``score.device``)."""
    device = (device or "auto").lower()
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"{who} must be one of auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise ConfigError(f"{who}: {device} was asked for, but torch sees no CUDA GPU")
    return device


def resolve_precision(precision: str | None, device: str, *, gpu_default: str = "bf16") -> str:
    """``auto`` -> ``gpu_default`` on a CUDA device, ``fp32`` on CPU; any other value as given."""
    precision = precision or "auto"
    if precision != "auto":
        return precision
    return gpu_default if device.startswith("cuda") else "fp32"


def task_resources(device: str) -> dict[str, int]:
    """Ray resources of a task that computes on ``device`` (a whole GPU when it is CUDA)."""
    return {"num_gpus": 1} if device.startswith("cuda") else {}
