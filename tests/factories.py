"""Test data: small pools written straight into img2dataset's output layout (no HTTP, no spawn).

The layout matches what img2dataset 1.47 writes with ``output_format="webdataset"``,
``save_additional_columns=["uid"]`` and ``compute_hash="sha256"`` (checked against a real run):
``{shard:05d}.tar`` with ``{key}.jpg/.txt/.json`` per sample, ``{shard:05d}.parquet`` with one row per
input url (failures too) and ``{shard:05d}_stats.json``. Keys are ``{shard:05d}{index:04d}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from poolsieve.core.shapes import COLOURS, SHAPES, draw_shape, encode_jpeg, english_caption, make_uid


@dataclass
class Sample:
    uid: str
    jpeg: bytes | None  # None: a failed download (no tar member)
    caption: str
    shape: str = ""
    colour: str = ""
    original_width: int = 256
    original_height: int = 256
    status: str = "success"
    error_message: str | None = None


def make_samples(n: int, seed: int = 0, image_size: int = 32, fail_every: int = 0) -> list[Sample]:
    """``n`` clean coloured-shape samples; every ``fail_every``-th one (if > 0) is a failed download."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        uid = make_uid(rng)
        if fail_every and i % fail_every == fail_every - 1:
            out.append(Sample(uid, None, english_caption(shape, colour, rng), shape, colour,
                              status="failed_to_download", error_message="HTTP Error 404: Not Found"))
            continue
        img = draw_shape(shape, colour, image_size, image_size, rng)
        out.append(Sample(uid, encode_jpeg(img), english_caption(shape, colour, rng), shape, colour))
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset_shards(shards_dir: str | Path, samples: list[Sample], per_shard: int) -> list[Path]:
    """Write ``samples`` as img2dataset webdataset shards; return the tar paths."""
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    tars = []
    for shard_id, lo in enumerate(range(0, len(samples), per_shard)):
        chunk = samples[lo:lo + per_shard]
        name = f"{shard_id:05d}"
        rows = []
        with tarfile.open(shards_dir / f"{name}.tar", "w") as tar:
            for i, s in enumerate(chunk):
                key = f"{name}{i:04d}"
                meta = {
                    "uid": s.uid, "caption": s.caption, "url": f"http://127.0.0.1:1/images/{s.uid}.jpg",
                    "key": key, "status": s.status, "error_message": s.error_message,
                    "width": None, "height": None, "original_width": None, "original_height": None,
                    "exif": None, "sha256": None,
                }
                if s.jpeg is not None:
                    from PIL import Image

                    w, h = Image.open(io.BytesIO(s.jpeg)).size
                    meta.update(width=w, height=h, original_width=s.original_width,
                                original_height=s.original_height, exif="{}",
                                sha256=hashlib.sha256(s.jpeg).hexdigest())
                    _add(tar, f"{key}.jpg", s.jpeg)
                    _add(tar, f"{key}.txt", s.caption.encode())
                    _add(tar, f"{key}.json", json.dumps(meta, indent=4).encode())
                rows.append(meta)
        df = pd.DataFrame(rows)
        for col in ("width", "height", "original_width", "original_height"):
            df[col] = df[col].astype("Int32")
        df.to_parquet(shards_dir / f"{name}.parquet", index=False)
        successes = sum(s.status == "success" for s in chunk)
        stats = {"count": len(chunk), "successes": successes, "failed_to_download": len(chunk) - successes,
                 "failed_to_resize": 0, "duration": 0.0, "start_time": 0.0, "end_time": 0.0,
                 "status_dict": {"success": successes, **({"HTTP Error 404: Not Found": len(chunk) - successes}
                                                          if successes < len(chunk) else {})}}
        (shards_dir / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
        tars.append(shards_dir / f"{name}.tar")
    return tars


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (not following links) -> its bytes (None for a folder or link)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            out[str(p.relative_to(folder))] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out
