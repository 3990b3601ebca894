"""Images from outside (pool shards in the report, a seed folder in train-scorer) are checked by their
header before any pixel is decoded: a decompression bomb is skipped, not decoded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid small PNG whose header claims ``width`` x ``height`` pixels (CRC fixed up)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.fixture(autouse=True)
def no_pil_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL's own bomb check off: only poolsieve's header check stands between the bomb and a decode."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)


def test_bomb_header_is_what_it_claims() -> None:
    with Image.open(io.BytesIO(png_bomb())) as im:
        assert im.size == (100_000, 100_000)


def test_report_thumbnail_skips_a_bomb_and_keeps_a_real_image(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    from poolsieve.pipeline.inspect.grids import thumbnail_uri

    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):  # every pixel decode goes through ImageFile.load
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    assert thumbnail_uri(png_bomb()) is None
    assert decoded == [], "the bomb's pixels were decoded"
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (0, 128, 255)).save(buf, "JPEG")
    uri = thumbnail_uri(buf.getvalue())
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")


def test_train_scorer_seed_folder_leaves_a_bomb_out(tmp_path: Path) -> None:
    from poolsieve.pipeline.train_scorer import write_pair_shards

    folder = tmp_path / "seed"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_bomb())
    (folder / "bomb.txt").write_text("a red square")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 200, 0)).save(good, "JPEG")
    (folder / "ok.jpg").write_bytes(good.getvalue())
    (folder / "ok.txt").write_text("a green square")
    shards, description = write_pair_shards(folder, tmp_path / "out")
    import tarfile

    names = []
    for t in sorted(Path(shards).glob("*.tar")):
        with tarfile.open(t) as tar:
            names += tar.getnames()
    assert sum(n.endswith((".jpg", ".png")) for n in names) == 1, names
    assert "too large" in description, description


@pytest.mark.parametrize("junk", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_report_thumbnail_of_junk_is_none(junk: bytes) -> None:
    from poolsieve.pipeline.inspect.grids import thumbnail_uri

    assert thumbnail_uri(junk) is None
