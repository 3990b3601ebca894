"""Batches and encoders for the score stage: CPU preparation of chunks, and the model side that encodes them.

A shard is cut into chunks of ``chunk_size`` samples. ``iter_prepared_chunks`` (a CPU worker) reads the
tar, decodes every image once, applies the CPU half of each model's own preprocessing (resize, crop,
RGB: everything before ``ToTensor``) into ``uint8`` arrays, tokenises the captions and computes the
per-row table columns. ``Encoder`` (one per device) finishes the preprocessing on its device
(``/255`` and ``Normalize``, bit-identical to open_clip's ``ToTensor`` + ``Normalize``), encodes image
and caption with every model, L2-normalises, and returns fp16 embeddings plus fp32 cosine scores.

With ``decode="gpu"`` the CPU worker only reads the tar and sends JPEG bytes; the encoder decodes them
with torchvision's nvjpeg path and resizes on the device (bicubic with antialias, as open_clip does on
PIL images; pixels differ from PIL's by rounding, so scores differ in the third decimal).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.devices import resolve_device, resolve_precision
from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import (
    CAPTION_TRUNCATED,
    MAX_CAPTION_BYTES,
    MAX_IMAGE_BYTES,
    STATUS_DECODE_ERROR,
    STATUS_SUCCESS,
    STATUS_TOO_LARGE,
    model_key,
    pixel_count_or_none,
)
from poolsieve.core.models import ModelSpec
from poolsieve.core.shard_reader import TarSample, iter_tar_samples

DECODE_MODES = ("cpu", "gpu")
GPU_DECODABLE = ("JPEG",)


# ------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class ModelEntry:
    """One model of a score run: its open_clip spec and the key naming its columns."""

    spec: ModelSpec
    key: str

    @classmethod
    def parse(cls, value: Any) -> ModelEntry:
        """``"[KEY=]ARCH[:PRETRAINED_OR_PATH]"`` or ``{arch, pretrained, key}``.

        The key names the columns; by default ``b32``/``l14`` for OpenAI's ViT-B-32/L-14 (DataComp's
        names), else the sanitised architecture. ``b32=ViT-B-32:/ckpt/openai-b32.pt`` names it explicitly.
        """
        key = value.get("key") if isinstance(value, dict) else None
        if isinstance(value, str) and "=" in value.split(":", 1)[0]:
            key, value = value.split("=", 1)
        spec = ModelSpec.parse(value)
        return cls(spec, str(key) if key else model_key(spec.arch, spec.pretrained))


def parse_models(values: Sequence[Any] | str | dict, trust_checkpoint: bool = False) -> list[ModelEntry]:
    """``trust_checkpoint``: local checkpoints may need full unpickling (``--trust-checkpoint``)."""
    if isinstance(values, (str, dict)):
        values = [values]
    if not values:
        raise ConfigError("score: no models given (e.g. --model ViT-B-32:openai)")
    entries = [ModelEntry.parse(v) for v in values]
    if trust_checkpoint:
        entries = [replace(e, spec=replace(e.spec, trust_checkpoint=True)) for e in entries]
    keys = [e.key for e in entries]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"score: two models share the column key {dupes[0]!r}; give one a 'key' of its own")
    return entries


# ----------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class ImagePrep:
    """The CPU half of a model's image preprocessing plus what the device half needs.

    ``pil_transform`` maps a PIL image to the pre-``ToTensor`` PIL image; ``mean``/``std`` are the
    ``Normalize`` of the device half. When the preprocessing is not of the form ``[..., ToTensor,
    Normalize]``, ``full_transform`` is the whole thing and runs on the CPU (float32 transfer).
    ``resize``/``crop``/``interpolation`` describe a plain resize + centre crop for device decoding.
    """

    pil_transform: Any
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    full_transform: Any = None
    resize: int | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "bicubic"

    @property
    def ident(self) -> str:
        return repr((repr(self.pil_transform), self.mean, self.std, repr(self.full_transform)))

    @property
    def device_decodable(self) -> bool:
        return self.full_transform is None and self.resize is not None and self.crop is not None


def split_preprocess(preprocess: Any) -> ImagePrep:
    """Split an open_clip eval transform into its PIL part and its ``Normalize`` constants."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    tensor_at = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
    if tensor_at is None or tensor_at != len(steps) - 2 or not isinstance(steps[-1], T.Normalize):
        return ImagePrep(pil_transform=None, full_transform=preprocess)
    pil_steps = steps[:tensor_at]
    norm = steps[-1]
    resize = crop = None
    interpolation = "bicubic"
    kinds = [type(t).__name__ for t in pil_steps]
    if kinds[:2] == ["Resize", "CenterCrop"] and all(k in ("MaybeConvertMode",) for k in kinds[2:]):
        size = pil_steps[0].size
        size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
        if isinstance(size, int):
            resize = size
            crop = tuple(int(c) for c in pil_steps[1].size)
            interpolation = pil_steps[0].interpolation.value
    return ImagePrep(pil_transform=T.Compose(pil_steps), mean=tuple(float(m) for m in norm.mean),
                     std=tuple(float(s) for s in norm.std), resize=resize, crop=crop, interpolation=interpolation)


@functools.lru_cache(maxsize=8)
def tokenizer_for(arch: str) -> Any:
    """open_clip's tokenizer for ``arch``, created once per process."""
    import open_clip

    from poolsieve.core.models import register_model_configs

    register_model_configs()
    return open_clip.get_tokenizer(arch)


# --------------------------------------------------------------------------- prepared chunks
@dataclass
class ChunkPlan:
    """What a CPU worker needs to prepare chunks for a set of models (picklable)."""

    preps: list[ImagePrep]           # unique image preprocessings
    tokenizer_archs: list[str]       # unique tokenizers, by architecture name
    chunk_size: int = 256
    decode: str = "cpu"
    language: bool = True


@dataclass
class PreparedChunk:
    """Rows ``[start, start + n)`` of one shard: table columns, pixels and tokens of the decoded rows."""

    shard: str
    index: int
    start: int
    columns: dict[str, list[Any]]
    ok: np.ndarray                                    # rows handed to the encoder
    pixels: list[np.ndarray | None] = field(default_factory=list)  # per prep: [n_ok, H, W, 3] uint8 (or float)
    jpeg_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ok-row indices sent as bytes
    jpeg_bytes: list[bytes] = field(default_factory=list)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # arch -> [n_ok, context] int64

    @property
    def num_rows(self) -> int:
        return len(self.ok)


def iter_prepared_chunks(tar_path: str | Path, plan: ChunkPlan) -> Iterator[PreparedChunk]:
    """Read a shard and yield its prepared chunks in tar order (none for an empty shard)."""
    tar_path = Path(tar_path)
    shard = tar_path.name.split(".")[0]
    buf: list[TarSample] = []
    index = start = 0
    for sample in iter_tar_samples(tar_path):
        if sample.uid is None:
            raise InputError(tar_path, f"sample {sample.key} has no uid in its .json "
                                       "(download with img2dataset's save_additional_columns=['uid'])")
        buf.append(sample)
        if len(buf) >= plan.chunk_size:
            yield prepare_chunk(buf, plan, shard, index, start)
            index, start, buf = index + 1, start + len(buf), []
    if buf:
        yield prepare_chunk(buf, plan, shard, index, start)


def prepare_chunk(samples: Sequence[TarSample], plan: ChunkPlan, shard: str, index: int, start: int) -> PreparedChunk:
    """Decode, preprocess (CPU half), tokenise and describe ``samples``."""
    from PIL import Image

    from poolsieve.core.language import count_chars, count_words, detect_languages

    n = len(samples)
    texts = [s.caption for s in samples]
    cols: dict[str, list[Any]] = {c: [] for c in ("uid", "key", "text", "original_width", "original_height", "width",
                                                  "height", "sha256", "status", "error")}
    ok = np.zeros(n, dtype=bool)
    per_prep: list[list[np.ndarray]] = [[] for _ in plan.preps]
    jpeg_rows: list[int] = []
    jpeg_bytes: list[bytes] = []
    for i, s in enumerate(samples):
        width = height = None
        status, error = STATUS_SUCCESS, None
        if s.image_over_cap is not None:
            status, error = STATUS_TOO_LARGE, (f"image member of {s.image_over_cap} bytes is over the "
                                               f"{MAX_IMAGE_BYTES >> 20} MiB cap (not read)")
        elif s.image is None:
            status, error = STATUS_DECODE_ERROR, "no image in the tar for this sample"
        else:
            try:
                img = Image.open(io.BytesIO(s.image))
                width, height = img.size
                if plan.decode == "gpu" and img.format in GPU_DECODABLE and all(p.device_decodable for p in plan.preps):
                    jpeg_rows.append(int(ok.sum()))
                    jpeg_bytes.append(s.image)
                    arrays = [None] * len(plan.preps)
                else:
                    img.load()
                    arrays = [_apply_prep(p, img) for p in plan.preps]
            except Exception as e:  # noqa: BLE001 - any undecodable image is a recorded row
                status, error = STATUS_DECODE_ERROR, f"{type(e).__name__}: {e}"
            else:
                ok[i] = True
                for j, a in enumerate(arrays):
                    if a is not None:
                        per_prep[j].append(a)
        if s.caption_full_bytes is not None:
            cut = f"{CAPTION_TRUNCATED}: the first {MAX_CAPTION_BYTES} of its {s.caption_full_bytes} bytes kept"
            error = cut if error is None else f"{error}; {cut}"
        meta = s.meta
        cols["uid"].append(s.uid)
        cols["key"].append(s.key.rsplit("/", 1)[-1])
        cols["text"].append(texts[i])
        cols["original_width"].append(pixel_count_or_none(meta.get("original_width")))
        cols["original_height"].append(pixel_count_or_none(meta.get("original_height")))
        cols["width"].append(width if width is not None else pixel_count_or_none(meta.get("width")))
        cols["height"].append(height if height is not None else pixel_count_or_none(meta.get("height")))
        cols["sha256"].append(hashlib.sha256(s.image).hexdigest() if s.image is not None else None)
        cols["status"].append(status)
        cols["error"].append(error)
    cols["caption_length"] = count_chars(texts).tolist()
    cols["caption_words"] = count_words(texts).tolist()
    if plan.language:
        codes, conf = detect_languages(texts)
        cols["language"], cols["language_score"] = codes.tolist(), conf.tolist()
    else:
        cols["language"], cols["language_score"] = [None] * n, [float("nan")] * n
    pixels = [np.stack(arrs) if arrs else None for arrs in per_prep]
    ok_texts = [t if t is not None else "" for t, good in zip(texts, ok, strict=True) if good]
    tokens = {arch: tokenizer_for(arch)(ok_texts).numpy() if ok_texts else np.zeros((0, 1), np.int64)
              for arch in plan.tokenizer_archs}
    return PreparedChunk(shard, index, start, cols, ok, pixels, np.asarray(jpeg_rows, np.int64), jpeg_bytes, tokens)


def _apply_prep(prep: ImagePrep, img: Any) -> np.ndarray:
    if prep.full_transform is not None:
        return prep.full_transform(img).numpy()
    return np.asarray(prep.pil_transform(img), dtype=np.uint8)


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


def auto_threads() -> int:
    """Torch threads for a CPU encoder: the cores not already busy (by the 1-minute load average), at least 1.

    On a shared machine, more threads than free cores make every thread wait on the others: measured on
    2 cores under a load of 20, the tiny model ran 4-5x faster on 1 thread than on 2.
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

        from poolsieve.core.models import load_model

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
                pixels = self._pixels(chunk, pi, lo, hi, device_images[pi])
                with torch.inference_mode():
                    ie = model.encode_image(pixels.to(self._dtype(model))).float()
                    te = model.encode_text(torch.tensor(tokens[lo:hi], device=self.device)).float()
                    ie = torch.nn.functional.normalize(ie, dim=-1)
                    te = torch.nn.functional.normalize(te, dim=-1)
                    s = (ie * te).sum(-1)
                img[lo:hi] = ie.cpu().numpy().astype(np.float16)
                txt[lo:hi] = te.cpu().numpy().astype(np.float16)
                sc[lo:hi] = s.cpu().numpy()
            img[~good], txt[~good], sc[~good] = 0, 0, np.nan
            image_out[entry.key], text_out[entry.key], scores[entry.key] = img, txt, sc
        return EncodedChunk(chunk.shard, chunk.index, chunk.start, columns, chunk.ok, image_out, text_out, scores,
                            time.perf_counter() - t0)

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


@dataclass(frozen=True)
class ShardFailure:
    """What ``read_chunks`` hands over, after the shard's good chunks, when the shard is bad input."""

    tar: str
    problem: str


def read_chunks(tar_path: str | Path, plan: ChunkPlan) -> Iterator[PreparedChunk | ShardFailure]:
    """``iter_prepared_chunks``, with bad input (a truncated tar, a sample without uid) handed over as a
    ``ShardFailure`` instead of raised, so that the other shards go on."""
    try:
        yield from iter_prepared_chunks(tar_path, plan)
    except InputError as e:
        yield ShardFailure(str(tar_path), e.problem)


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
            from PIL import Image

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
