"""A decoded image's 64-bit perceptual hash (the score table's ``phash`` column), and small reference thumbnails.

``image_phash`` is imagehash's ``phash`` (DCT of a 32 x 32 greyscale copy, the 8 x 8 lowest frequencies
against their median: 64 bits), its bits read row by row from the most significant down as one uint64.
It needs no model: a re-encoded, resized or slightly cropped copy of an image lands a few bits from the
original whatever the scorer, and an image that merely looks alike lands far (``decontaminate``'s
``max_distance``). The score stage hashes the image it has already decoded for the models (pool and
reference images alike: the same decode, before any model preprocessing); with ``decode: gpu``, where the
CPU does not decode a JPEG in full, it hashes a JPEG draft decode at a reduced scale
(``draft_phash``: at least 128 px a side, so 4 x the hash's 32 px input), whose bits can differ from the
full decode's by a few (``tests/test_phash.py``: at most 2 bits on 40 generated JPEGs of 256-1024 px, mean 0.4).
"""

from __future__ import annotations

import io
from typing import Any

import imagehash
import numpy as np
from PIL import Image

DRAFT_SIDE = 128  # the smallest side a draft decode keeps for hashing
THUMB_SIDE = 64   # reference thumbnails: at most this many pixels a side
THUMB_QUALITY = 75


def image_phash(img: Image.Image) -> int | None:
    """The 64-bit perceptual hash of a decoded image as an unsigned int, or None when it cannot be made."""
    try:
        bits = imagehash.phash(img).hash.reshape(-1)
    except Exception:  # noqa: BLE001 - an image mode the hash cannot convert: the row has no hash
        return None
    return int.from_bytes(np.packbits(bits.astype(np.uint8)).tobytes(), "big")


def draft_phash(data: bytes) -> int | None:
    """``image_phash`` of a JPEG decoded at a reduced scale (PIL's draft mode: at least ``DRAFT_SIDE`` a
    side); what the CPU computes when the device decodes the image. The caller has opened ``data`` once
    already (its size checked against PIL's pixel limit)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("L", (DRAFT_SIDE, DRAFT_SIDE))
            img.load()
            return image_phash(img)
    except Exception:  # noqa: BLE001 - undecodable here: the device's decode records the row's error
        return None


def thumbnail_jpeg(img: Image.Image, side: int = THUMB_SIDE) -> bytes:
    """A small JPEG of a decoded image (at most ``side`` px a side): what the report shows of a reference image."""
    small = img.convert("RGB")
    small.thumbnail((side, side))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=THUMB_QUALITY)
    return out.getvalue()


def phash_of_bytes(data: bytes) -> Any:
    """``image_phash`` of encoded image bytes, decoded in full (tests and benchmarks: the pool's own rule)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return image_phash(img)
