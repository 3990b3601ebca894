"""Where the heavy maths of the embedding filters runs: ``cuda`` when present, else ``cpu``.

Torch and faiss are imported inside functions so that importing a filter module stays light.
"""

from __future__ import annotations

from poolsieve.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def faiss_gpu_available() -> bool:
    """True when the installed faiss is a GPU build and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` -> ``cuda`` if torch sees a GPU else ``cpu``; ``cuda`` without a GPU is a ConfigError."""
    device = (device or "auto").lower()
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU")
    return device


def task_resources(device: str) -> dict:
    """Ray resources of a task that computes on ``device`` (a whole GPU when it is ``cuda``)."""
    return {"num_gpus": 1} if device == "cuda" else {}
