"""The local image server: files over HTTP on 127.0.0.1, and each injected fault behaves as described."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from poolsieve.core.shapes import draw_shape, encode_jpeg
from poolsieve.pipeline.demo.image_server import (
    ImageServer,
    bomb_jpeg,
    declare_jpeg_size,
    free_port,
    truncate_jpeg,
)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    import numpy as np

    images = tmp_path / "synthetic" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (images / f"{name}.jpg").write_bytes(encode_jpeg(draw_shape("circle", "red", 48, 40, rng)))
    (tmp_path / "secret.txt").write_text("outside the served folder")
    return tmp_path / "synthetic"


def _get(url: str, timeout: float = 5) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def test_serves_files_and_counts_requests(image_root: Path) -> None:
    with ImageServer(image_root) as srv:
        status, body, ctype = _get(f"{srv.url}/images/a.jpg")
        assert status == 200 and ctype == "image/jpeg"
        assert body == (image_root / "images" / "a.jpg").read_bytes()
        assert Image.open(io.BytesIO(body)).size == (48, 40)
        assert _get(f"{srv.url}/images/missing.jpg")[0] == 404
        assert _get(f"{srv.url}/../secret.txt")[0] == 404
        assert _get(f"{srv.url}/images/%2e%2e/%2e%2e/secret.txt")[0] == 404
        assert srv.requests(f"{srv.url}/images/a.jpg") == 1
        assert srv.requests("/images/b.jpg") == 0
        assert srv.requests() == 4


def test_faults_and_recovery(image_root: Path) -> None:
    faults = {"/images/a.jpg": "http_404", "/images/b.jpg": "http_500", "/images/c.jpg": "redirect_loop"}
    with ImageServer(image_root, faults=faults) as srv:
        assert _get(f"{srv.url}/images/a.jpg")[0] == 404
        assert _get(f"{srv.url}/images/b.jpg")[0] == 500
        with pytest.raises(urllib.error.HTTPError, match="infinite loop"):
            urllib.request.urlopen(f"{srv.url}/images/c.jpg", timeout=5)
        srv.set_faults({"/images/a.jpg": "not_image", "/images/b.jpg": "truncated", "/images/c.jpg": "bomb"})
        status, body, ctype = _get(f"{srv.url}/images/a.jpg")
        assert status == 200 and ctype == "text/html" and b"<html>" in body
        status, body, _ = _get(f"{srv.url}/images/b.jpg")
        assert status == 200 and 0 < len(body) < len((image_root / "images" / "b.jpg").read_bytes())
        with pytest.raises(OSError):
            Image.open(io.BytesIO(body)).load()
        status, body, _ = _get(f"{srv.url}/images/c.jpg")
        assert status == 200 and len(body) < 2000
        Image.MAX_IMAGE_PIXELS, saved = None, Image.MAX_IMAGE_PIXELS
        try:
            assert Image.open(io.BytesIO(body)).size == (50_000, 50_000)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        srv.clear_faults()
        for name in ("a", "b", "c"):
            assert _get(f"{srv.url}/images/{name}.jpg")[1] == (image_root / "images" / f"{name}.jpg").read_bytes()


def test_hang_trickle_and_reset_defeat_the_client(image_root: Path) -> None:
    faults = {"/images/a.jpg": "hang", "/images/b.jpg": "trickle", "/images/c.jpg": "reset"}
    with ImageServer(image_root, faults=faults, trickle_interval=0.2) as srv:
        t = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            urllib.request.urlopen(f"{srv.url}/images/a.jpg", timeout=0.5).read()
        assert time.monotonic() - t < 3
        with urllib.request.urlopen(f"{srv.url}/images/b.jpg", timeout=1) as r:
            t = time.monotonic()
            first = r.read1(100)
            assert len(first) <= 2  # bytes come one at a time
            r.read1(100)
            assert time.monotonic() - t >= 0.15
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"{srv.url}/images/c.jpg", timeout=2).read()
    # stop() returned although handler threads were hanging / trickling


def test_latency_and_unknown_fault(image_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        ImageServer(image_root, faults={"/images/a.jpg": "explode"})
    with ImageServer(image_root, latency=0.3) as srv:
        t = time.monotonic()
        assert _get(f"{srv.url}/images/a.jpg")[0] == 200
        assert time.monotonic() - t >= 0.3


def test_jpeg_surgery_helpers() -> None:
    import numpy as np

    data = encode_jpeg(draw_shape("square", "blue", 40, 30, np.random.default_rng(1)))
    assert Image.open(io.BytesIO(declare_jpeg_size(data, 123, 45))).size == (123, 45)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(truncate_jpeg(data))).load()
    Image.MAX_IMAGE_PIXELS, saved = None, Image.MAX_IMAGE_PIXELS
    try:
        assert Image.open(io.BytesIO(bomb_jpeg(60_000, 40_000))).size == (60_000, 40_000)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@pytest.mark.subprocess
def test_command_line_server(image_root: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "poolsieve.pipeline.demo.image_server", str(image_root.parent),
                             "--port", str(port), "--fault", "/images/b.jpg=http_500"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        assert _get(f"http://127.0.0.1:{port}/images/a.jpg")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/images/b.jpg")[0] == 500
    finally:
        proc.terminate()
        proc.wait(timeout=10)
