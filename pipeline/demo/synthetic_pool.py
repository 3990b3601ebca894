"""The built-in pool: coloured-shape images with captions that describe them, defects mixed in.

``poolsieve generate`` writes a CommonPool-style pool into a workspace:

* ``metadata/{:05d}.parquet``: uid, url, text, original_width, original_height, sha256 (CommonPool schema);
* ``synthetic/images/{uid}.jpg``: the image bytes that the local HTTP server serves at each url;
* ``synthetic/labels.parquet``: the truth per uid: shape, colour, defect, and what the caption says.

Defects are mixed in at set rates: mismatched captions, non-English captions, images that are too
small, extreme aspect ratios, exact duplicate images, empty or one-word captions. Everything is a
deterministic function of the seed.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.shapes import COLOURS, SHAPES, draw_shape, encode_jpeg, english_caption, make_uid

DEFECTS = ("mismatched_caption", "non_english", "too_small", "extreme_aspect", "duplicate_image", "short_caption")
DEFAULT_DEFECT_RATES = {
    "mismatched_caption": 0.15,
    "non_english": 0.08,
    "too_small": 0.06,
    "extreme_aspect": 0.04,
    "duplicate_image": 0.04,
    "short_caption": 0.05,
}
# Non-English captions (German, French, Spanish, Italian) of the same content.
FOREIGN_SHAPES = {
    "de": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck"},
    "fr": {"circle": "cercle", "square": "carré", "triangle": "triangle"},
    "es": {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo"},
    "it": {"circle": "cerchio", "square": "quadrato", "triangle": "triangolo"},
}
FOREIGN_COLOURS = {
    "de": {"red": "roter", "green": "grüner", "blue": "blauer", "yellow": "gelber", "purple": "violetter", "orange": "oranger"},
    "fr": {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet", "orange": "orange"},
    "es": {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado", "orange": "naranja"},
    "it": {"red": "rosso", "green": "verde", "blue": "blu", "yellow": "giallo", "purple": "viola", "orange": "arancione"},
}
FOREIGN_TEMPLATES = {
    "de": "ein Foto von einem {colour} {shape} auf einem einfachen Hintergrund",
    "fr": "une photo d'un {shape} {colour} sur un fond uni",
    "es": "una foto de un {shape} {colour} sobre un fondo liso",
    "it": "una foto di un {shape} {colour} su uno sfondo semplice",
}
SHORT_CAPTIONS = ("", "image", "photo", "img", "untitled")


@dataclass
class PoolSpec:
    """How to generate a pool. ``base_url`` is where the image server will listen."""

    num_samples: int = 3000
    samples_per_file: int = 1000
    image_size: int = 256
    seed: int = 0
    base_url: str = "http://127.0.0.1:8765"
    defect_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DEFECT_RATES))


def generate_pool(root: str | Path, spec: PoolSpec) -> dict[str, Any]:
    """Write metadata parquets, image files and the label side table under workspace ``root``."""
    import pandas as pd

    from poolsieve.core.formats import atomic_path

    unknown = set(spec.defect_rates) - set(DEFECTS)
    if unknown:
        raise ValueError(f"unknown defect(s) {sorted(unknown)}; known: {DEFECTS}")
    if sum(spec.defect_rates.values()) > 1:
        raise ValueError("defect rates add up to more than 1")
    root = Path(root)
    images_dir = root / "synthetic" / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    n = spec.num_samples
    # Assign exactly round(rate * n) samples to each defect, the rest clean, in a seeded random order.
    defects = np.full(n, "none", dtype=object)
    order = rng.permutation(n)
    start = 0
    for name in DEFECTS:
        count = int(round(spec.defect_rates.get(name, 0.0) * n))
        defects[order[start:start + count]] = name
        start += count
    rows, labels = [], []
    first_clean: dict[str, tuple[str, bytes]] = {}
    for i in range(n):
        srng = np.random.default_rng([spec.seed, i])
        uid = make_uid(srng)
        shape = SHAPES[int(srng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(srng.integers(len(COLOURS)))]
        defect = defects[i]
        w = h = spec.image_size
        if defect == "too_small":
            w = h = int(srng.integers(32, 100))
        elif defect == "extreme_aspect":
            w, h = spec.image_size * 2, max(32, spec.image_size // 3)
            if srng.random() < 0.5:
                w, h = h, w
        caption_shape, caption_colour, language = shape, colour, "en"
        if defect == "duplicate_image" and first_clean:
            # Same bytes as an earlier clean image (same content), under a new uid and caption.
            src_uid = list(first_clean)[int(srng.integers(len(first_clean)))]
            shape, colour = first_clean[src_uid][0].split("/")
            caption_shape, caption_colour = shape, colour
            data = first_clean[src_uid][1]
            w = h = spec.image_size
        else:
            data = encode_jpeg(draw_shape(shape, colour, w, h, srng))
        if defect == "mismatched_caption":
            caption_shape = SHAPES[(SHAPES.index(shape) + int(srng.integers(1, len(SHAPES)))) % len(SHAPES)]
            colours = list(COLOURS)
            caption_colour = colours[(colours.index(colour) + int(srng.integers(1, len(colours)))) % len(colours)]
        if defect == "non_english":
            language = list(FOREIGN_TEMPLATES)[int(srng.integers(len(FOREIGN_TEMPLATES)))]
            text = FOREIGN_TEMPLATES[language].format(colour=FOREIGN_COLOURS[language][colour],
                                                      shape=FOREIGN_SHAPES[language][shape])
        elif defect == "short_caption":
            text = SHORT_CAPTIONS[int(srng.integers(len(SHORT_CAPTIONS)))]
            caption_shape = caption_colour = ""
        else:
            text = english_caption(caption_shape, caption_colour, srng)
        if defect == "none" and len(first_clean) < 256:
            first_clean[uid] = (f"{shape}/{colour}", data)
        (images_dir / f"{uid}.jpg").write_bytes(data)
        rows.append({
            "uid": uid,
            "url": f"{spec.base_url.rstrip('/')}/images/{uid}.jpg",
            "text": text,
            "original_width": w,
            "original_height": h,
            "sha256": hashlib.sha256(data).hexdigest(),
        })
        labels.append({"uid": uid, "shape": shape, "colour": colour, "defect": defect, "language": language,
                       "caption_shape": caption_shape, "caption_colour": caption_colour})
    meta_dir = root / "metadata"
    meta_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    for f, lo in enumerate(range(0, n, spec.samples_per_file)):
        with atomic_path(meta_dir / f"{f:05d}.parquet") as tmp:
            df.iloc[lo:lo + spec.samples_per_file].to_parquet(tmp, index=False)
    with atomic_path(root / "synthetic" / "labels.parquet") as tmp:
        pd.DataFrame(labels).to_parquet(tmp, index=False)
    counts = pd.Series(defects).value_counts().to_dict()
    return {"samples": n, "metadata_files": -(-n // spec.samples_per_file), "defects": counts,
            "images_dir": str(images_dir), "base_url": spec.base_url}


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-samples", type=int, help="pairs in the pool (default 3000)")
    p.add_argument("--samples-per-file", type=int, help="rows per metadata parquet (default 1000)")
    p.add_argument("--image-size", type=int, help="side of a normal image in pixels (default 256)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--base-url", help="where the image server will listen (default http://127.0.0.1:8765)")


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    from poolsieve.core.config import build
    from poolsieve.core.progress import print_summary

    ws = ctx.workspace(create=True)
    spec = build(PoolSpec, ctx.section("generate"), "generate", {
        "num_samples": args.num_samples, "samples_per_file": args.samples_per_file,
        "image_size": args.image_size, "seed": args.seed, "base_url": args.base_url})
    summary = generate_pool(ws.root, spec)
    print_summary("generate", [("workspace", ws.root), ("samples", summary["samples"]),
                               ("metadata files", summary["metadata_files"]),
                               ("defects", ", ".join(f"{k}={v}" for k, v in sorted(summary["defects"].items()))),
                               ("serve images with", f"python -m poolsieve.pipeline.demo.image_server {ws.root}"),
                               ("then download with", _download_hint(ws.root, spec.base_url))])
    return 0


def _download_hint(root: Any, base_url: str) -> str:
    """The download command for a generated pool: its server's address must be allowed (it is not global)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(base_url).hostname or "127.0.0.1"
    try:
        network = str(ipaddress.ip_network(host))
    except ValueError:
        network = "<the server's address>/32"
    return f"poolsieve download -w {root} --allow-network {network}"
