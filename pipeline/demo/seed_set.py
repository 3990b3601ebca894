"""A clean seed set as a webdataset folder: what the scorer (a data-filtering network) trains on.

No pretrained CLIP exists offline, so poolsieve's quickstart trains its own scorer on clean pairs
drawn apart from the pool (``core.shapes.generate_clean_pairs``), in the resharder's
layout: ``{:08d}.tar`` with ``jpg``/``txt``/``json`` members and ``{:08d}_stats.json``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from poolsieve.core.formats import atomic_path, write_json
from poolsieve.core.shapes import generate_clean_pairs
from poolsieve.core.workspace import shard_stats_path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_seed_set(folder: str | Path, num_samples: int, seed: int, image_size: int = 64,
                   samples_per_shard: int = 1000) -> list[Path]:
    """Write ``num_samples`` clean pairs into ``folder``; return the shard paths (idempotent per seed)."""
    folder = Path(folder)
    pairs = generate_clean_pairs(num_samples, seed, image_size)
    shards: list[Path] = []
    for shard in range(-(-num_samples // samples_per_shard)):
        count = min(samples_per_shard, num_samples - shard * samples_per_shard)
        path = folder / f"{shard:08d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
            for i in range(count):
                uid, jpeg, caption, shape, colour = next(pairs)
                key = f"{shard:08d}{i:04d}"
                _add(tar, f"{key}.jpg", jpeg)
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps({"uid": uid, "caption": caption, "key": key,
                                                     "shape": shape, "colour": colour}).encode())
        write_json(shard_stats_path(path), {"successes": count})
        shards.append(path)
    return shards
