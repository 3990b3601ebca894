"""Loading open_clip models: an architecture name plus a pretrained tag or a local checkpoint path.

poolsieve's own small configs (``core/model_configs/*.json``, e.g. ``poolsieve-tiny``) are
registered with open_clip on import, in every process that loads a model (Ray workers too).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .errors import InputError, PoolsieveError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
HUB_PREFIXES = ("hf-hub:", "local-dir:")
_registered = False


def register_model_configs() -> None:
    """Make poolsieve's model configs known to open_clip (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True


def register_model_config(path: str | Path) -> str:
    """Register one open_clip model config JSON (``--model-config``); return its architecture name (the
    file name without ``.json``, as open_clip names configs)."""
    import open_clip

    path = Path(path).expanduser()
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable model config JSON ({e})") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise InputError(path, "an open_clip model config needs embed_dim, vision_cfg and text_cfg")
    register_model_configs()
    open_clip.add_model_config(path)
    return path.stem


@dataclass(frozen=True)
class ModelSpec:
    """``arch`` is an open_clip model name; ``pretrained`` a tag (``openai``, ``datacomp_xl_s13b_b90k``)
    or a path to a local checkpoint (open_clip's ``state_dict`` format); ``None`` means random weights."""

    arch: str
    pretrained: str | None = None
    trust_checkpoint: bool = False  # a local checkpoint may need full unpickling (runs code in it)

    @classmethod
    def parse(cls, value: Any) -> ModelSpec:
        """``ARCH``, ``ARCH:TAG``, ``ARCH:/path/ckpt.pt`` or a whole-model spec open_clip resolves itself
        (``hf-hub:ORG/NAME[@REV]``, ``local-dir:PATH``), which is kept whole as the arch."""
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            if value.startswith(HUB_PREFIXES):
                return cls(value, None)
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
    first mismatching tensors instead of open_clip's long traceback. Weights from the hub (a pretrained
    tag, ``hf-hub:``) come from its cache when the hub does not answer: weights not cached there fail
    at once in one line saying what to use instead (no minute of retries).
    """
    import open_clip

    register_model_configs()
    if not spec.arch.startswith(HUB_PREFIXES) and spec.arch not in open_clip.list_models():
        raise PoolsieveError(f"unknown open_clip architecture {spec.arch!r}")
    pretrained = spec.pretrained
    if spec.is_local_checkpoint:
        path = Path(pretrained)
        if not path.exists():
            raise InputError(path, "checkpoint file does not exist")
        with _quiet_root_logger():  # open_clip warns "no pretrained weights" before we load them
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=None,
                                                                         precision=precision, device=device)
        _load_local_checkpoint(model, path, trust=spec.trust_checkpoint)
        tokenizer = open_clip.get_tokenizer(spec.arch)
    else:
        hub = spec.arch.startswith("hf-hub:") or bool(pretrained)
        unreachable = hub_unreachable() if hub else None
        name = spec.arch + (f":{pretrained}" if pretrained else "")
        try:
            with _quiet_root_logger(logging.CRITICAL), _hub_offline(unreachable is not None):
                model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=pretrained,
                                                                             precision=precision, device=device)
                tokenizer = open_clip.get_tokenizer(spec.arch)
        except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError, OSError, ValueError, hub errors
            if unreachable:
                raise PoolsieveError(f"cannot load {name}: {unreachable} and its weights are not in the local cache; "
                                     f"{OFFLINE_HINT}") from None
            raise PoolsieveError(f"cannot load {name}: {_last_line(e)}") from None
    model.eval()
    return model, preprocess, tokenizer


OFFLINE_HINT = ("pass a local checkpoint instead (ARCH:/path/to/checkpoint.pt, or local-dir:RUN_FOLDER for a "
                "poolsieve run), or train a scorer from your own seed data: `poolsieve train-scorer -w WORKSPACE "
                "--seed SUBSET_OR_FOLDER` prints the --model to score with (the quickstart's own scorer is made "
                "this way: poolsieve-tiny:WORKSPACE/runs/scorer/checkpoints/epoch_latest.pt)")


def check_model_spec(spec: ModelSpec, *, weights: bool = True) -> None:
    """Fail in one line, before any work, when ``spec`` cannot load: an unknown architecture, an unknown
    pretrained tag, a local checkpoint or model folder that does not exist; with ``weights``, also hub
    weights that are neither in the local cache nor downloadable (the hub does not answer, or
    ``HF_HUB_OFFLINE`` is set). Nothing is loaded or downloaded: it takes a fraction of a second
    (at most one request of a few seconds, only for weights not cached)."""
    import open_clip

    register_model_configs()
    name = spec.arch + (f":{spec.pretrained}" if spec.pretrained else "")
    if spec.arch.startswith("local-dir:"):
        folder = Path(spec.arch.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise InputError(folder, "not an open_clip model folder (no open_clip_config.json)")
        return
    if spec.arch.startswith("hf-hub:"):
        repo, _, revision = spec.arch.removeprefix("hf-hub:").partition("@")
        if weights and not _hub_cached(repo, ("open_clip_config.json",), revision or None):
            _require_hub(name)
        return
    known = open_clip.list_models()
    if spec.arch not in known:
        close = difflib.get_close_matches(spec.arch, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (`open_clip.list_models()` lists them)"
        raise PoolsieveError(f"unknown open_clip architecture {spec.arch!r}{hint}")
    if not spec.pretrained:
        return
    if spec.is_local_checkpoint:
        path = Path(spec.pretrained).expanduser()
        if not path.is_file():
            raise InputError(path, "checkpoint file does not exist")
        return
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        more = f" and {len(tags) - 6} more" if len(tags) > 6 else ""
        known_tags = f"; its tags: {', '.join(tags[:6])}{more}" if tags else "; it has no pretrained tags"
        raise PoolsieveError(f"{name}: {spec.pretrained!r} is neither a pretrained tag of {spec.arch} nor an "
                             f"existing checkpoint file{known_tags}")
    if weights and not _pretrained_cached(cfg):
        _require_hub(name)


def _require_hub(name: str) -> None:
    unreachable = hub_unreachable()
    if unreachable:
        raise PoolsieveError(f"cannot load {name}: {unreachable} and its weights are not in the local cache; "
                             f"{OFFLINE_HINT}")


def _hub_cached(repo: str, filenames: tuple[str, ...], revision: str | None = None) -> bool:
    """Whether one of ``filenames`` of hub repo ``repo`` is in huggingface_hub's local cache."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        try:
            if isinstance(try_to_load_from_cache(repo, filename, revision=revision), str):
                return True
        except Exception:  # noqa: BLE001, S112 - a malformed repo id is simply not cached
            continue
    return False


def _pretrained_cached(cfg: dict[str, Any]) -> bool:
    """Whether open_clip would find a pretrained tag's weights (``cfg``: its pretrained config) without a
    download: the hub file or its safetensors twin in the hub cache, else the URL's file in ``~/.cache/clip``."""
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, has_hf_hub

    if "file" in cfg:
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub") and has_hf_hub():
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" means open_clip's default file name
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else (
            filename[:-4] + ".safetensors" if filename.endswith((".bin", ".pth")) else filename)
        names = [safe, filename]
        return _hub_cached(repo, tuple(dict.fromkeys(names)))
    if cfg.get("url"):
        return (Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])).is_file()
    return False


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """None when the Hugging Face hub (``$HF_ENDPOINT``, through any configured proxy) answers one request
    within ``timeout`` seconds, else why not (also when ``HF_HUB_OFFLINE`` is set)."""
    import huggingface_hub.constants as hub

    if hub.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        requests.head(hub.ENDPOINT, timeout=timeout, allow_redirects=False)
    except requests.RequestException as e:
        return f"the hub at {hub.ENDPOINT} is unreachable ({type(e).__name__})"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's documented offline mode for the block: files come from its cache, never retried."""
    import huggingface_hub.constants as hub

    saved = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _quiet_root_logger(level: int = logging.ERROR) -> Iterator[None]:
    """open_clip logs to the root logger; below ``level`` nothing shows in the block (the caller reports)."""
    root = logging.getLogger()
    saved = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(saved)


def read_checkpoint_state(path: Path, trust: bool = False) -> dict[str, Any]:
    """The ``state_dict`` of a local checkpoint: ``.safetensors``, or a ``torch.save`` file such as the
    training checkpoints open_clip writes (``{"epoch", "name", "state_dict", "optimizer", ...}``).

    A ``torch.save`` file is read with ``weights_only=True``: tensors, numbers, strings and containers,
    nothing that runs code. One that needs more (any other pickled object) is refused in one line naming
    the file, unless ``trust`` (``--trust-checkpoint``) allows full unpickling. (open_clip's own
    ``load_state_dict`` retries a failed load without ``weights_only``, so it is not used here.)
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            ckpt = load_file(str(path), device="cpu")
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        unsafe = [] if trust else _unsafe_globals(path)
        if unsafe or (not trust and "GLOBAL" in str(e)):
            named = f" ({', '.join(sorted(unsafe)[:3])})" if unsafe else ""
            raise InputError(path, f"checkpoint needs unpickling arbitrary objects{named}; pass --trust-checkpoint "
                                   "if you trust this file (unpickling can run any code in it)") from None
        raise InputError(path, f"not a readable PyTorch checkpoint ({_last_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable checkpoint ({_last_line(e)})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise InputError(path, "checkpoint holds no state_dict")
    if str(next(iter(state))).startswith("module."):  # saved from a DistributedDataParallel model
        state = {str(k).removeprefix("module."): v for k, v in state.items()}
    return state


def _unsafe_globals(path: Path) -> list[str]:
    """Globals in a ``torch.save`` zip file that ``weights_only`` refuses, found without unpickling."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        return list(get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: the caller falls back on torch's message
        return []


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _load_local_checkpoint(model: Any, path: Path, trust: bool = False) -> None:
    state = read_checkpoint_state(path, trust)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        detail = []
        if shape:
            k = shape[0]
            detail.append(f"{len(shape)} tensor(s) of another shape, e.g. {k}: checkpoint "
                          f"{tuple(getattr(state[k], 'shape', ()))} vs model {tuple(own[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise InputError(path, f"checkpoint does not fit architecture {type(model).__name__} as named: "
                               + "; ".join(detail))
    model.load_state_dict(state)
