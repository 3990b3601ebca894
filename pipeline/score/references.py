"""Embed a labelled reference image set with the score models: ``references/<name>.npz``.

The image-based filter keeps pool images near a target set (DataComp's ImageNet-cluster baseline).
``poolsieve score --reference DIR --name NAME`` embeds that set with the same models and the same
preprocessing as the pool, into ``<ws>/references/NAME.npz`` with ``<key>_img`` (fp16, L2-normalised)
per model, ``labels`` (str), ``sources`` (where each row came from), ``sha256`` (hex digest of each
image's bytes) and ``phash`` (the perceptual hash the pool's ``phash`` column holds, from the same decode):
what the ``decontaminate`` filter matches pool images against; and a small JPEG thumbnail per image
(``thumbnails`` + ``thumbnail_offsets``: what the report shows beside a pool image that matched). The
keys are ``core/formats.py``'s.

``DIR`` is either a folder of class subfolders (``DIR/<label>/*.jpg``, as torchvision's ImageFolder)
or webdataset tars (``DIR/*.tar`` or one ``.tar``) whose label is the sample's ``.cls``, else its json
``label``, else its ``.txt``. Images that do not decode are left out and counted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.formats import (
    REFERENCE_PHASH,
    REFERENCE_PHASH_VALID,
    REFERENCE_THUMBNAIL_OFFSETS,
    REFERENCE_THUMBNAILS,
    STATUS_SUCCESS,
    atomic_path,
    embedding_keys,
    pack_blobs,
)
from poolsieve.core.models import check_model_spec
from poolsieve.core.progress import Progress
from poolsieve.core.shard_reader import IMAGE_EXTENSIONS, TarSample, iter_tar_samples
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.encode import Encoder
from poolsieve.pipeline.score.model_entries import parse_models
from poolsieve.pipeline.score.prepare import prepare_chunk


def iter_reference_samples(source: str | Path) -> Iterator[tuple[TarSample, str, str]]:
    """``(sample, label, where)`` for every image of an ImageFolder-style folder or of webdataset tars."""
    source = Path(source)
    if not source.exists():
        raise InputError(source, "reference set does not exist")
    tars = [source] if source.is_file() else sorted(source.glob("*.tar"))
    if source.is_file() and source.suffix != ".tar":
        raise InputError(source, "a reference set is a folder of class subfolders, a folder of .tar files or one .tar")
    if tars:
        for tar in tars:
            for s in iter_tar_samples(tar):
                yield s, _tar_label(s, tar), f"{tar.name}:{s.key}"
        return
    classes = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(source, "no class subfolders and no .tar files in the reference folder")
    for folder in classes:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
                yield (TarSample(key=f.stem, image=f.read_bytes(), image_ext=f.suffix.lstrip("."), text=""),
                       folder.name, str(f.relative_to(source)))


def _tar_label(s: TarSample, tar: Path) -> str:
    cls = s.extras.get("cls")
    if cls is not None:
        return cls.decode("utf-8", errors="replace").strip()
    for field in ("label", "class"):
        if s.meta.get(field) is not None:
            return str(s.meta[field])
    if s.text is not None:
        return s.text.strip()
    raise InputError(tar, f"sample {s.key} has no label (.cls, json 'label' or .txt)")


def embed_reference(ws: Workspace, source: str | Path, name: str, config: Any, overwrite: bool = False,
                    quiet: bool = False) -> dict[str, Any]:
    """Embed ``source`` with ``config.models`` (a ``ScoreConfig``) in this process; return a summary
    (``quiet``: no progress line)."""
    out = ws.reference_path(name)
    if out.exists() and not overwrite:
        return {"reference": str(out), "skipped": "exists (use --overwrite to redo)"}
    t0 = time.perf_counter()
    models = parse_models(config.models, config.trust_checkpoint)
    for m in models:  # before any image is read
        check_model_spec(m.spec)
    encoder = Encoder(models, config.device, config.precision, config.batch_size, config.threads, "cpu")
    plan = encoder.plan(config.chunk_size, language=False)
    plan.decode, plan.thumbnails = "cpu", True
    embeddings: dict[str, list[np.ndarray]] = {m.key: [] for m in models}
    labels: list[str] = []
    sources: list[str] = []
    hashes: list[str] = []
    phashes: list[int | None] = []
    thumbnails: list[bytes] = []
    failed = 0
    progress = Progress(f"reference {name}", total=None, unit="images", quiet=quiet)
    batch: list[tuple[TarSample, str, str]] = []

    def flush() -> None:
        nonlocal failed
        if not batch:
            return
        samples = [s for s, _, _ in batch]
        for s in samples:
            s.meta.setdefault("uid", None)
        chunk = prepare_chunk(samples, plan, name, 0, 0)
        encoded = encoder.encode(chunk)
        keep = np.asarray(encoded.columns["status"]) == STATUS_SUCCESS
        good = keep[chunk.ok]
        for m in models:
            embeddings[m.key].append(encoded.image[m.key][good])
        labels.extend(lab for (_, lab, _), k in zip(batch, keep, strict=True) if k)
        sources.extend(src for (_, _, src), k in zip(batch, keep, strict=True) if k)
        hashes.extend(hashlib.sha256(s.image).hexdigest() for s, k in zip(samples, keep, strict=True) if k)
        phashes.extend(h for h, k in zip(encoded.columns["phash"], keep, strict=True) if k)
        thumbnails.extend(t or b"" for t, k in zip(encoded.columns["thumbnail"], keep, strict=True) if k)
        failed += int((~keep).sum())
        progress.update(len(batch))
        batch.clear()

    for item in iter_reference_samples(source):
        batch.append(item)
        if len(batch) >= plan.chunk_size:
            flush()
    flush()
    if not labels:
        raise InputError(source, "no decodable images in the reference set")
    arrays: dict[str, np.ndarray] = {}
    for m in models:
        arrays[embedding_keys(m.key)[0]] = np.concatenate(embeddings[m.key]).astype(np.float16)
    arrays["labels"] = np.asarray(labels, dtype=str)
    arrays["sources"] = np.asarray(sources, dtype=str)
    arrays["sha256"] = np.asarray(hashes, dtype=str)
    arrays[REFERENCE_PHASH] = np.asarray([h or 0 for h in phashes], dtype=np.uint64)
    arrays[REFERENCE_PHASH_VALID] = np.asarray([h is not None for h in phashes], dtype=bool)
    arrays[REFERENCE_THUMBNAILS], arrays[REFERENCE_THUMBNAIL_OFFSETS] = pack_blobs(thumbnails)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    summary = {"reference": str(out), "images": len(labels), "classes": len(set(labels)),
               "undecodable (left out)": failed, "models": ", ".join(m.key for m in models),
               "elapsed s": round(time.perf_counter() - t0, 2)}
    return summary


def read_reference(path: str | Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [n, d] fp16, labels [n] str)`` of one model key from a reference npz."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "reference set does not exist (make it with `poolsieve score --reference DIR --name NAME`)")
    with np.load(path, allow_pickle=False) as z:
        img_key = embedding_keys(key)[0]
        if img_key not in z.files:
            raise InputError(path, f"no embeddings {img_key!r}; has {', '.join(z.files)}")
        emb, labels = z[img_key], z["labels"]
    if len(emb) != len(labels):
        raise InputError(path, f"{len(emb)} embeddings but {len(labels)} labels: misaligned")
    return emb, labels
