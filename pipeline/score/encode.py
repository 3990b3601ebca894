"""The device half of scoring: encoders that finish preprocessing, encode and score prepared chunks.

``Encoder`` (one per device) holds every model of a run. It finishes the preprocessing of a chunk from
``prepare.py`` on its device (``/255`` and ``Normalize``, bit-identical to open_clip's ``ToTensor`` +
``Normalize``), encodes image and caption with every model, L2-normalises, and returns fp16 embeddings
plus fp32 cosine scores. ``EncoderActor`` is the same as a long-lived worker of ``Runtime.actor_pool``.

With ``decode="gpu"`` the encoder decodes the JPEG bytes the CPU worker sent with torchvision's nvjpeg
path and resizes on the device (bicubic with antialias, as open_clip does on PIL images; pixels differ
from PIL's by rounding, so scores differ in the third decimal).
"""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from poolsieve.core.devices import resolve_device, resolve_precision
from poolsieve.core.errors import ConfigError
from poolsieve.core.formats import STATUS_DECODE_ERROR
from poolsieve.core.models import load_model
from poolsieve.pipeline.score.model_entries import ModelEntry
from poolsieve.pipeline.score.prepare import (
    DECODE_MODES,
    ChunkPlan,
    ImagePrep,
    PreparedChunk,
    ShardFailure,
    split_preprocess,
)


# ---------------------------------------------------------------------------------- encoding
@dataclass
class EncodedChunk:
    """A chunk's table columns with, per model key, fp16 embeddings and fp32 scores of its ``ok`` rows."""

    shard: str
    index: int
    start: int
    columns: dict[str, list[Any]]
    ok: np.ndarray
    image: dict[str, np.ndarray]
    text: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    seconds: float = 0.0
    language_model: dict[str, str] | None = None  # as the prepared chunk says


def auto_threads() -> int:
    """Torch threads for a CPU encoder: the cores not already busy (by the 1-minute load average), at least 1.

    On a shared machine, more threads than free cores make every thread wait on the others.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy + 1)))


class Encoder:
    """Holds every model of a score run on one device and encodes prepared chunks."""

    def __init__(self, models: Sequence[ModelEntry], device: str = "auto", precision: str = "auto",
                 batch_size: int = 0, threads: int = 0, decode: str = "cpu"):
        import torch

        self.device = resolve_device(device, who="score.device")
        self.precision = resolve_precision(precision, self.device)
        self.threads = threads or auto_threads()
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        if decode not in DECODE_MODES:
            raise ConfigError(f"score: decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        self.decode = decode
        self.models = list(models)
        self.loaded: list[tuple[Any, Any]] = []  # (model, preprocess)
        for entry in self.models:
            model, preprocess, _ = load_model(entry.spec, self.device, self.precision)
            self.loaded.append((model, preprocess))
        preps = [split_preprocess(p) for _, p in self.loaded]
        self.preps: list[ImagePrep] = []
        self.prep_of: list[int] = []
        for p in preps:
            idents = [q.ident for q in self.preps]
            if p.ident not in idents:
                self.preps.append(p)
                idents.append(p.ident)
            self.prep_of.append(idents.index(p.ident))
        self.tokenizer_archs = list(dict.fromkeys(e.spec.arch for e in self.models))
        self.dims = {e.key: int(_embed_dim(m)) for e, (m, _) in zip(self.models, self.loaded, strict=True)}
        self.batch_size = batch_size or self._auto_batch_size()

    # -------------------------------------------------------------- description
    def plan(self, chunk_size: int = 0, language: bool = True) -> ChunkPlan:
        decode = self.decode if self.device.startswith("cuda") else "cpu"
        return ChunkPlan(self.preps, self.tokenizer_archs, chunk_size or self.batch_size, decode, language)

    def describe(self, chunk_size: int = 0, language: bool = True) -> dict[str, Any]:
        return {"plan": self.plan(chunk_size, language), "dims": self.dims, "batch_size": self.batch_size,
                "device": self.device, "precision": self.precision, "threads": self.threads}

    # -------------------------------------------------------------- encoding
    def encode(self, chunk: PreparedChunk) -> EncodedChunk:
        import torch

        t0 = time.perf_counter()
        n_ok = int(chunk.ok.sum())
        columns = chunk.columns
        good = np.ones(n_ok, dtype=bool)
        device_images: list[Any] = [None] * len(self.preps)
        if len(chunk.jpeg_rows):
            ok_rows = np.flatnonzero(chunk.ok)
            cpu_rows = np.setdiff1d(np.arange(n_ok), chunk.jpeg_rows)
            for j, prep in enumerate(self.preps):
                decoded, failed = decode_on_device(chunk.jpeg_bytes, prep, self.device)
                full = torch.zeros((n_ok, *decoded.shape[1:]), dtype=torch.uint8, device=self.device)
                full[torch.from_numpy(chunk.jpeg_rows).to(self.device)] = decoded
                if len(cpu_rows):
                    full[torch.from_numpy(cpu_rows).to(self.device)] = torch.from_numpy(chunk.pixels[j]).to(self.device)
                device_images[j] = full
                for r, err in failed.items():
                    good[chunk.jpeg_rows[r]] = False
                    row = int(ok_rows[chunk.jpeg_rows[r]])
                    columns["status"][row], columns["error"][row] = STATUS_DECODE_ERROR, err
                    if "phash" in columns:  # a row that did not decode has no hash
                        columns["phash"][row] = None
        image_out: dict[str, np.ndarray] = {}
        text_out: dict[str, np.ndarray] = {}
        scores: dict[str, np.ndarray] = {}
        for entry, (model, _), pi in zip(self.models, self.loaded, self.prep_of, strict=True):
            dim = self.dims[entry.key]
            img = np.zeros((n_ok, dim), np.float16)
            txt = np.zeros((n_ok, dim), np.float16)
            sc = np.full(n_ok, np.nan, np.float32)
            tokens = chunk.tokens[entry.spec.arch]
            for lo in range(0, n_ok, self.batch_size):
                hi = min(lo + self.batch_size, n_ok)
                pixels = _padded(self._pixels(chunk, pi, lo, hi, device_images[pi]), self.batch_size)
                text = _padded(torch.tensor(tokens[lo:hi], device=self.device), self.batch_size)
                with torch.inference_mode():
                    ie = model.encode_image(pixels.to(self._dtype(model))).float()[:hi - lo]
                    te = model.encode_text(text).float()[:hi - lo]
                    ie = torch.nn.functional.normalize(ie, dim=-1)
                    te = torch.nn.functional.normalize(te, dim=-1)
                    s = (ie * te).sum(-1)
                img[lo:hi] = ie.cpu().numpy().astype(np.float16)
                txt[lo:hi] = te.cpu().numpy().astype(np.float16)
                sc[lo:hi] = s.cpu().numpy()
            img[~good], txt[~good], sc[~good] = 0, 0, np.nan
            image_out[entry.key], text_out[entry.key], scores[entry.key] = img, txt, sc
        return EncodedChunk(chunk.shard, chunk.index, chunk.start, columns, chunk.ok, image_out, text_out, scores,
                            time.perf_counter() - t0, chunk.language_model)

    def _dtype(self, model: Any) -> Any:
        return next(model.visual.parameters()).dtype

    def _pixels(self, chunk: PreparedChunk, pi: int, lo: int, hi: int, on_device: Any) -> Any:
        """Normalised float pixels of ok rows ``[lo, hi)`` on the device."""
        import torch

        prep = self.preps[pi]
        cpu = chunk.pixels[pi]
        if prep.full_transform is not None:
            return torch.from_numpy(np.array(cpu[lo:hi])).to(self.device)
        if on_device is None:
            with warnings.catch_warnings():  # arrays from Ray's object store are read-only; nothing writes to them
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(cpu[lo:hi]).to(self.device, non_blocking=True)
        else:
            x = on_device[lo:hi]
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(prep.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(prep.std, device=self.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def _auto_batch_size(self) -> int:
        """CPU: 64. GPU: double from 128 while images/s still rises by 5% and memory lasts (at most 2048)."""
        if not self.device.startswith("cuda"):
            return 64
        import torch

        best, best_rate = 128, 0.0
        size = 128
        while size <= 2048:
            try:
                rate = min(_probe_rate(m, self._dtype(m), size, self.device, p) for (m, _), p in
                           zip(self.loaded, [self.preps[i] for i in self.prep_of], strict=True))
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
            if rate < best_rate * 1.05:
                break
            best, best_rate = size, rate
            size *= 2
        return best


class EncoderActor:
    """An ``Encoder`` as a long-lived worker (``Runtime.actor_pool``). It is made with the encoder's
    arguments and loads the models in ``setup`` (a call of its own), so that a bad checkpoint reaches the
    driver as its own ``InputError`` rather than as a dead actor; a worker restarted after its node died
    loads them again on its first ``encode``."""

    def __init__(self, models: Sequence[ModelEntry], device: str, precision: str, batch_size: int, threads: int,
                 decode: str, chunk_size: int, language: bool) -> None:
        self.args = (models, device, precision, batch_size, threads, decode)
        self.chunk_size, self.language = chunk_size, language
        self.encoder: Encoder | None = None

    def setup(self) -> dict[str, Any]:
        if self.encoder is None:
            self.encoder = Encoder(*self.args)
        return self.encoder.describe(self.chunk_size, self.language)

    def encode(self, chunk: PreparedChunk | ShardFailure) -> EncodedChunk | ShardFailure:
        if isinstance(chunk, ShardFailure):
            return chunk
        self.setup()
        assert self.encoder is not None
        return self.encoder.encode(chunk)


def _padded(x: Any, size: int) -> Any:
    """``x`` with its last row repeated up to ``size`` rows: every forward has the batch's shape, since the
    math libraries pick their kernels by shape and kernels round differently, so a sample's embedding would
    otherwise change in its last bits with the size of the batch it fell into (the end of a shard)."""
    import torch

    if len(x) >= size:
        return x
    return torch.cat([x, x[-1:].expand(size - len(x), *x.shape[1:])])


def _probe_rate(model: Any, dtype: Any, batch: int, device: str, prep: ImagePrep) -> float:
    import torch

    side = prep.crop[0] if prep.crop else getattr(model.visual, "image_size", (224, 224))[0]
    x = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
    with torch.inference_mode():
        model.encode_image(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.encode_image(x)
        torch.cuda.synchronize()
    return batch / (time.perf_counter() - t0)


def _embed_dim(model: Any) -> int:
    dim = getattr(model.visual, "output_dim", None)
    if dim:
        return int(dim)
    proj = getattr(model, "text_projection", None)
    return int(proj.shape[-1]) if proj is not None else int(model.encode_text(__import__("torch").zeros(1, 1)).shape[-1])


def decode_on_device(jpegs: Sequence[bytes], prep: ImagePrep, device: str) -> tuple[Any, dict[int, str]]:
    """Decode JPEGs with torchvision (nvjpeg on CUDA), resize shortest side + centre crop on ``device``.

    Returns ``([n, H, W, 3] uint8 tensor, {row: error})``; rows that fail are zeros.
    """
    import torch
    from torchvision.transforms.v2 import functional as F

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    h, w = prep.crop
    out = torch.zeros((len(jpegs), h, w, 3), dtype=torch.uint8, device=device)
    failed: dict[int, str] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        images = []
        for i, d in enumerate(data):
            try:
                images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as e:
                images.append(None)
                failed[i] = f"RuntimeError: {e}"
    for i in list(failed):  # what the device decoder rejects (CMYK, odd markers) gets a second try with PIL
        try:
            pil = np.asarray(prep.pil_transform(Image.open(io.BytesIO(jpegs[i]))), dtype=np.uint8)
        except Exception:  # noqa: BLE001, S112 - the device decoder's error is the one recorded
            continue
        out[i] = torch.from_numpy(pil).to(device)
        del failed[i]
    interp = F.InterpolationMode(prep.interpolation)
    for i, im in enumerate(images):
        if im is None:
            continue
        x = F.resize(im.unsqueeze(0).float(), [prep.resize], interpolation=interp, antialias=True)
        x = F.center_crop(x, [h, w]).round_().clamp_(0, 255).to(torch.uint8)
        out[i] = x[0].permute(1, 2, 0)
    return out, failed
