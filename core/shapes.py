"""The built-in world of coloured shapes: images, English captions and uids, drawn from a seed.

The built-in pool (``pipeline/demo``), the demo's clean seed set and the synthetic zero-shot tasks
(``eval/synthetic_tasks.py``) all draw from it, so it lives below them all.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
CAPTION_TEMPLATES = (
    "a photo of a {colour} {shape}",
    "a {colour} {shape} on a plain background",
    "picture of one {colour} {shape}",
    "a simple drawing of a {colour} {shape}",
    "the {shape} is {colour}",
)

def draw_shape(shape: str, colour: str, width: int, height: int, rng: np.random.Generator):
    """A PIL image of one coloured shape on a light, slightly noisy background."""
    from PIL import Image, ImageDraw

    bg = rng.integers(200, 256, size=3)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    arr = np.clip(bg[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    size = int(side * rng.uniform(0.45, 0.8))
    x0 = int(rng.integers(0, max(1, width - size + 1)))
    y0 = int(rng.integers(0, max(1, height - size + 1)))
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])
    if shape == "circle":
        draw.ellipse([x0, y0, x0 + size, y0 + size], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x0 + size, y0 + size], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def encode_jpeg(img: Any, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def english_caption(shape: str, colour: str, rng: np.random.Generator) -> str:
    return CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(colour=colour, shape=shape)


def make_uid(rng: np.random.Generator) -> str:
    return rng.bytes(16).hex()


def generate_clean_pairs(n: int, seed: int, image_size: int = 64):
    """Yield ``(uid, jpeg_bytes, caption, shape, colour)`` of clean pairs (a seed set or an eval set)."""
    rng = np.random.default_rng([seed, 7919])
    for _ in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        img = draw_shape(shape, colour, image_size, image_size, rng)
        yield make_uid(rng), encode_jpeg(img), english_caption(shape, colour, rng), shape, colour
