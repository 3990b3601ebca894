"""The CPU half of scoring: a shard read and cut into chunks ready for an encoder.

A shard is cut into chunks of ``chunk_size`` samples. ``iter_prepared_chunks`` (a CPU worker) reads the
tar, decodes every image once, applies the CPU half of each model's own preprocessing (resize, crop,
RGB: everything before ``ToTensor``) into ``uint8`` arrays, tokenises the captions and computes the
per-row table columns, the image's perceptual hash among them (``phash.py``: hashed from the same decoded
image). The encoder (``encode.py``, on its device) does the rest.

With ``decode="gpu"`` the CPU worker only reads the tar and sends JPEG bytes; the encoder decodes them
(the CPU hashes a reduced draft decode of those JPEGs: ``phash.draft_phash``).
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from poolsieve.core.errors import InputError
from poolsieve.core.formats import (
    CAPTION_TRUNCATED,
    MAX_CAPTION_BYTES,
    MAX_IMAGE_BYTES,
    STATUS_DECODE_ERROR,
    STATUS_SUCCESS,
    STATUS_TOO_LARGE,
    pixel_count_or_none,
)
from poolsieve.core.language import (
    count_chars,
    count_words,
    detect_languages,
    lid_model_record,
)
from poolsieve.core.models import register_model_configs
from poolsieve.core.shard_reader import TarSample, iter_tar_samples
from poolsieve.pipeline.score.phash import draft_phash, image_phash, thumbnail_jpeg

DECODE_MODES = ("cpu", "gpu")
GPU_DECODABLE = ("JPEG",)


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

    register_model_configs()
    return open_clip.get_tokenizer(arch)


# ---------------------------------------------------------------------------- prepared chunks
@dataclass
class ChunkPlan:
    """What a CPU worker needs to prepare chunks for a set of models (picklable)."""

    preps: list[ImagePrep]           # unique image preprocessings
    tokenizer_archs: list[str]       # unique tokenizers, by architecture name
    chunk_size: int = 256
    decode: str = "cpu"
    language: bool = True
    thumbnails: bool = False         # also a small JPEG per decoded image (column ``thumbnail``; references)


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
    language_model: dict[str, str] | None = None  # the fastText model of the ``language`` column (file, sha256)

    @property
    def num_rows(self) -> int:
        return len(self.ok)


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


def iter_prepared_chunks(tar_path: str | Path, plan: ChunkPlan) -> Iterator[PreparedChunk]:
    """Read a shard and yield its prepared chunks, rows in key order (``iter_tar_samples``): a chunk holds
    the same samples, and the encoder the same batches, however the download ordered the tar (none for an
    empty shard)."""
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
    n = len(samples)
    texts = [s.caption for s in samples]
    cols: dict[str, list[Any]] = {c: [] for c in ("uid", "key", "text", "original_width", "original_height", "width",
                                                  "height", "sha256", "status", "error", "phash")}
    if plan.thumbnails:
        cols["thumbnail"] = []
    ok = np.zeros(n, dtype=bool)
    per_prep: list[list[np.ndarray]] = [[] for _ in plan.preps]
    jpeg_rows: list[int] = []
    jpeg_bytes: list[bytes] = []
    for i, s in enumerate(samples):
        decoded = _decode(s, plan, jpeg_rows, jpeg_bytes, int(ok[:i].sum()))
        (width, height), status, error, arrays = decoded.size, decoded.status, decoded.error, decoded.arrays
        cols["phash"].append(decoded.phash)
        if plan.thumbnails:
            cols["thumbnail"].append(decoded.thumbnail)
        if arrays is not None:
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
    _caption_columns(cols, texts, plan.language)
    pixels = [np.stack(arrs) if arrs else None for arrs in per_prep]
    ok_texts = [t if t is not None else "" for t, good in zip(texts, ok, strict=True) if good]
    tokens = {arch: tokenizer_for(arch)(ok_texts).numpy() if ok_texts else np.zeros((0, 1), np.int64)
              for arch in plan.tokenizer_archs}
    return PreparedChunk(shard, index, start, cols, ok, pixels, np.asarray(jpeg_rows, np.int64), jpeg_bytes, tokens,
                         lid_model_record() if plan.language else None)


@dataclass
class Decoded:
    """One sample's image as the chunk records it: ``arrays`` (one per prep, None for a JPEG left to the
    device) is None when the row is not handed to the encoder; ``phash`` None where no hash was made."""

    size: tuple[int | None, int | None]
    status: str
    error: str | None
    arrays: list[Any] | None = None
    phash: int | None = None
    thumbnail: bytes | None = None


def _decode(s: TarSample, plan: ChunkPlan, jpeg_rows: list[int], jpeg_bytes: list[bytes], ok_row: int) -> Decoded:
    """Decode one sample's image once (PIL's pixel limit checked when it opens): the CPU half of each prep, its
    perceptual hash and (``plan.thumbnails``) its thumbnail, from that one decode. A JPEG left to the device
    has its bytes put in ``jpeg_bytes`` as ok row ``ok_row`` and is hashed from a reduced draft decode."""
    if s.image_over_cap is not None:
        return Decoded((None, None), STATUS_TOO_LARGE, (f"image member of {s.image_over_cap} bytes is over the "
                                                        f"{MAX_IMAGE_BYTES >> 20} MiB cap (not read)"))
    if s.image is None:
        return Decoded((None, None), STATUS_DECODE_ERROR, "no image in the tar for this sample")
    width = height = None
    try:
        img = Image.open(io.BytesIO(s.image))
        width, height = img.size
        if plan.decode == "gpu" and img.format in GPU_DECODABLE and all(p.device_decodable for p in plan.preps):
            jpeg_rows.append(ok_row)
            jpeg_bytes.append(s.image)
            return Decoded((width, height), STATUS_SUCCESS, None, [None] * len(plan.preps), draft_phash(s.image))
        img.load()
        arrays = [_apply_prep(p, img) for p in plan.preps]
        thumbnail = thumbnail_jpeg(img) if plan.thumbnails else None
    except Exception as e:  # noqa: BLE001 - any undecodable image is a recorded row
        return Decoded((width, height), STATUS_DECODE_ERROR, f"{type(e).__name__}: {e}")
    return Decoded((width, height), STATUS_SUCCESS, None, arrays, image_phash(img), thumbnail)


def _caption_columns(cols: dict[str, list[Any]], texts: list[str | None], language: bool) -> None:
    """Caption length, words and (unless ``language`` is off) fastText's language and its confidence."""
    cols["caption_length"] = count_chars(texts).tolist()
    cols["caption_words"] = count_words(texts).tolist()
    if language:
        codes, conf = detect_languages(texts)
        cols["language"], cols["language_score"] = codes.tolist(), conf.tolist()
    else:
        cols["language"], cols["language_score"] = [None] * len(texts), [float("nan")] * len(texts)


def _apply_prep(prep: ImagePrep, img: Any) -> np.ndarray:
    if prep.full_transform is not None:
        return prep.full_transform(img).numpy()
    return np.asarray(prep.pil_transform(img), dtype=np.uint8)
