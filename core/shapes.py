"""The built-in world of coloured shapes: images, English captions and uids, drawn from a seed.

The built-in pool (``pipeline/demo``), the demo's clean seed set and the synthetic zero-shot tasks
(``eval/synthetic_tasks.py``) all draw from it, so it lives below them all.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

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

# Off-task pictures (the pool's shift away from the tasks): patterns in colours the tasks never ask about.
TEXTURES = ("stripes", "checkerboard", "dots", "gradient")
TEXTURE_COLOURS = {"grey": (128, 128, 128), "brown": (120, 72, 30), "pink": (240, 150, 190), "teal": (20, 140, 140)}
TEXTURE_TEMPLATES = (
    "a texture of {colour} {texture}",
    "{colour} {texture} pattern",
    "an abstract background with {colour} {texture}",
    "wallpaper of {colour} {texture}",
)


def draw_shape(shape: str, colour: str, width: int, height: int, rng: np.random.Generator, hard: bool = False):
    """A PIL image of one coloured shape on a light, slightly noisy background.

    ``hard``: a small, faded shape among grey clutter (a hard example; the default draws are unchanged).
    """
    bg = rng.integers(200, 256, size=3)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    arr = np.clip(bg[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    if hard:
        for _ in range(int(rng.integers(3, 7))):
            r = int(side * rng.uniform(0.04, 0.1))
            cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
            grey = int(rng.integers(110, 190))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(grey, grey, grey))
    size = int(side * (rng.uniform(0.2, 0.35) if hard else rng.uniform(0.45, 0.8)))
    x0 = int(rng.integers(0, max(1, width - size + 1)))
    y0 = int(rng.integers(0, max(1, height - size + 1)))
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])
    if hard:  # faded halfway toward the background
        fill = tuple(int((f + int(b)) / 2) for f, b in zip(fill, bg, strict=True))
    if shape == "circle":
        draw.ellipse([x0, y0, x0 + size, y0 + size], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x0 + size, y0 + size], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def draw_texture(texture: str, colour: str, width: int, height: int, rng: np.random.Generator):
    """A PIL image of a two-tone pattern (``TEXTURES``) in one of ``TEXTURE_COLOURS``: no shape at all."""
    base = np.asarray(TEXTURE_COLOURS[colour], dtype=np.float64)
    light = base + (255 - base) * rng.uniform(0.5, 0.8)
    y, x = np.mgrid[0:height, 0:width]
    period = max(4, int(min(width, height) * rng.uniform(0.06, 0.2)))
    if texture == "stripes":
        on = ((x if rng.random() < 0.5 else y) // period) % 2 == 0
    elif texture == "checkerboard":
        on = ((x // period) + (y // period)) % 2 == 0
    elif texture == "dots":
        on = ((x % period - period / 2) ** 2 + (y % period - period / 2) ** 2) < (period / 3) ** 2
    elif texture == "gradient":
        t = (x / max(1, width - 1))[..., None]
        arr = base * (1 - t) + light * t
        return Image.fromarray(np.clip(arr + rng.integers(-6, 7, size=arr.shape), 0, 255).astype(np.uint8), "RGB")
    else:
        raise ValueError(f"unknown texture {texture!r}")
    arr = np.where(on[..., None], base, light) + rng.integers(-6, 7, size=(height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def texture_caption(texture: str, colour: str, rng: np.random.Generator) -> str:
    return TEXTURE_TEMPLATES[int(rng.integers(len(TEXTURE_TEMPLATES)))].format(colour=colour, texture=texture)


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
