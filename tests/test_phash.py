"""The score stage's perceptual hash: imagehash's phash as one uint64, and the draft decode that the CPU
hashes when the device decodes a JPEG (``decode: gpu``) stays within a few bits of the full decode's."""

from __future__ import annotations

import io

import imagehash
import numpy as np
from PIL import Image, ImageDraw

from poolsieve.pipeline.score.phash import draft_phash, image_phash, phash_of_bytes

DRAFT_DRIFT_BITS = 4  # decontaminate's max_distance is 8: a draft hash may use at most half of it


def drawing(rng: np.random.Generator) -> Image.Image:
    """A noisy drawing of ellipses at 256-1024 px, so that draft mode really decodes at a reduced scale."""
    side = int(rng.integers(256, 1024))
    img = Image.new("RGB", (side, int(side * rng.uniform(0.6, 1.4))), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, img.width // 2)), int(rng.integers(0, img.height // 2))
        x1, y1 = x0 + int(rng.integers(20, img.width // 2)), y0 + int(rng.integers(20, img.height // 2))
        draw.ellipse([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-20, 20, (img.height, img.width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_the_hash_is_imagehash_phash_as_one_uint64():
    img = drawing(np.random.default_rng(1))
    expected = imagehash.phash(img)
    got = image_phash(img)
    assert 0 <= got < 2**64
    assert imagehash.hex_to_hash(f"{got:016x}") == expected


def test_a_draft_decode_hashes_within_a_few_bits_of_the_full_decode():
    rng = np.random.default_rng(0)
    drift, reduced = [], 0
    for _ in range(40):
        img = drawing(rng)
        data = jpeg(img)
        with Image.open(io.BytesIO(data)) as probe:
            probe.draft("L", (128, 128))
            reduced += probe.size[0] < img.size[0]
        drift.append(bits(phash_of_bytes(data), draft_phash(data)))
    assert reduced >= 30  # draft mode did decode most of them at a reduced scale
    assert max(drift) <= DRAFT_DRIFT_BITS, drift
    assert np.mean(drift) <= 1.0, drift


def test_an_undecodable_jpeg_has_no_draft_hash():
    assert draft_phash(b"\xff\xd8\xff\xe0 not really a jpeg") is None
