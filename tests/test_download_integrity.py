"""Download-side integrity, reproduced on 127.0.0.1 (issue 13, findings 4 and 6).

Finding 4: an image is decoded only if PIL reads its size from the header and the size is within the
limit: a Radiance HDR (which OpenCV, img2dataset's decoder, reads and PIL cannot) and a PNG bomb are
refused before decoding, with a recorded reason. Finding 6: samples that img2dataset's writer drops are
recorded as failures that ``--retry-failed`` fetches; a binary caption column is refused up front; a run
that fetched too little (a dead server) fails in one line.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_download_support import FAST, assert_shards_whole, make_served_pool, tar_uids

from poolsieve.core.errors import InputError, PoolsieveError
from poolsieve.core.runtime import Runtime
from poolsieve.core.shapes import draw_shape, encode_jpeg
from poolsieve.pipeline.download import runner as download_runner
from poolsieve.pipeline.download.failures import FAILURES_NAME, failure_reason, update_failures
from poolsieve.pipeline.download.process import STAGING_NAME, clear_staging, make_job, run_img2dataset
from poolsieve.pipeline.download.report import REPORT_NAME
from poolsieve.pipeline.download.stage import DownloadConfig, download


# ------------------------------------------------------------------------------- crafted images
def radiance_hdr(width: int, height: int, rows: int) -> bytes:
    """A Radiance HDR file declaring ``width x height`` with only ``rows`` run-length encoded scanlines."""
    line = bytearray([2, 2, width >> 8, width & 255])
    for value in (128, 64, 32, 128):  # R, G, B, exponent: runs of at most 127 equal bytes
        left = width
        while left:
            n = min(127, left)
            line += bytes([128 + n, value])
            left -= n
    head = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    return head + bytes(line) * rows


def zero_png(width: int, height: int, channels: int = 1) -> bytes:
    """A real, fully decodable PNG of zeros (grey, or RGBA with ``channels=4``): tiny file, huge image."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    comp, row = zlib.compressobj(6), b"\0" * (1 + width * channels)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, {1: 0, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def small_jpeg() -> bytes:
    return encode_jpeg(draw_shape("circle", "red", 64, 64, np.random.default_rng(0)))


# ------------------------------------------------------------------------------- finding 4
class Recording:
    """img2dataset's real Resizer, recording each image it is given (to see what reached the decoder)."""

    def __init__(self) -> None:
        from img2dataset.resizer import Resizer

        self.resizer = Resizer(image_size=64, resize_mode="keep_ratio_largest", resize_only_if_bigger=True)
        self.calls = 0

    def __call__(self, stream, bbox=None):
        self.calls += 1
        return self.resizer(stream, bbox)


def test_only_measured_formats_within_the_limit_reach_the_decoder() -> None:
    inner = Recording()
    resizer = download_runner.BombCheckingResizer(inner, max_image_area=64 << 20)
    refused = {
        "hdr": radiance_hdr(20_000, 20_000, rows=4),
        "png_bomb": zero_png(12_000, 12_000),
        "rgba": zero_png(4_000, 4_000, channels=4),  # 16 Mpx with transparency: ~1.2 GB in the resizer
    }
    reasons = {name: resizer(io.BytesIO(data))[-1] for name, data in refused.items()}
    assert inner.calls == 0, reasons
    assert reasons["hdr"].startswith("image format refused: Radiance HDR")
    assert reasons["png_bomb"] == "image area too large: header declares 12000x12000 pixels"
    assert reasons["rgba"].startswith("image area too large: header declares 4000x4000 pixels with transparency")
    assert {failure_reason("failed_to_resize", r) for r in reasons.values()} == {"unsupported_format", "too_large"}
    from PIL import Image

    for fmt in ("TIFF", "PPM"):  # PIL reads them, but they are not given to OpenCV
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format=fmt)
        assert resizer(buf)[-1] == resizer(buf)[-1] and resizer(buf)[-1].startswith(f"image format refused: {fmt}")
    assert inner.calls == 0
    img, width, height, *_, err = resizer(io.BytesIO(small_jpeg()))
    assert err is None and (width, height) == (64, 64) and img[:3] == b"\xff\xd8\xff" and inner.calls == 1
    assert resizer(io.BytesIO(zero_png(2_000, 2_000, channels=4)))[-1] is None  # 4 Mpx with transparency is fine


@pytest.mark.subprocess
def test_opencv_limit_stops_any_format_in_the_runner_environment(tmp_path: Path) -> None:
    """The second stop: the runner's environment sets OpenCV's own pixel limit, which it checks from the
    header of every format before allocating (here an HDR, which PIL cannot measure)."""
    hdr = tmp_path / "a.hdr"
    hdr.write_bytes(radiance_hdr(20_000, 20_000, rows=4))
    code = ("import io, sys; from img2dataset.resizer import Resizer; "
            "r = Resizer(64, 'keep_ratio_largest', True); "
            "print(r(io.BytesIO(open(sys.argv[1], 'rb').read()))[-1])")
    env = dict(os.environ, OPENCV_IO_MAX_IMAGE_PIXELS=str(64 << 20), NO_ALBUMENTATIONS_UPDATE="1")
    out = subprocess.run([sys.executable, "-c", code, str(hdr)], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert "CV_IO_MAX_IMAGE_PIXELS" in out and failure_reason("failed_to_resize", out) == "too_large"


@pytest.mark.download
def test_hdr_and_png_bombs_served_on_localhost_are_refused_before_decoding(tmp_path: Path) -> None:
    pool = make_served_pool(tmp_path / "ws", n=8, per_file=8)
    uids = list(pool.metadata["uid"])
    images = tmp_path / "ws" / "synthetic" / "images"
    crafted = {uids[0]: radiance_hdr(20_000, 20_000, rows=8), uids[1]: zero_png(12_000, 12_000)}
    for uid, data in crafted.items():
        (images / f"{uid}.jpg").write_bytes(data)  # served under the pool's url
    try:
        report = download(pool.ws, DownloadConfig(samples_per_shard=8, watchdog_seconds=120, **FAST),
                          Runtime(executor="local"))
    finally:
        pool.server.stop()
    failures = pd.read_parquet(pool.ws.shards_dir / FAILURES_NAME).set_index("uid")
    assert failures.loc[uids[0], "reason"] == "unsupported_format"
    assert failures.loc[uids[0], "error_message"].startswith("image format refused: Radiance HDR")
    assert failures.loc[uids[1], "reason"] == "too_large"
    assert failures.loc[uids[1], "error_message"] == "image area too large: header declares 12000x12000 pixels"
    assert set(failures.index) == set(crafted)
    assert report["successes"] == 6 and set(tar_uids(pool.ws.shards_dir)) == set(uids[2:])


def test_defaults_bound_decode_memory() -> None:
    cfg = DownloadConfig()
    per_decode = cfg.max_image_area * download_runner.OPAQUE_BYTES_PER_PIXEL
    assert per_decode <= 1 << 30  # one decode per process at a time: at most 1 GiB
    assert 2 * cfg.threads * cfg.max_image_bytes <= 2 << 30  # fetched bytes waiting per process
    assert cfg.max_image_area < 12_000 * 12_000  # the 420 KB PNG that decoded to 825 MB


# ------------------------------------------------------------------------------- finding 6
def _binary_copies(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir()
    out = []
    for f in files:
        df = pd.read_parquet(f)
        df["text"] = df["text"].str.encode("utf-8")
        df.to_parquet(folder / f.name, index=False)
        out.append(folder / f.name)
    return out


def test_binary_text_column_is_refused_in_one_line(tmp_path: Path) -> None:
    pool = make_served_pool(tmp_path / "ws", n=4, per_file=4)
    pool.server.stop()
    files = pool.ws.metadata_files()
    _binary_copies(files, tmp_path / "bin")
    (tmp_path / "bin" / files[0].name).replace(files[0])
    with pytest.raises(InputError, match=r"00000\.parquet: column text has type binary; it must hold UTF-8"):
        download(pool.ws, DownloadConfig(samples_per_shard=4, **FAST), Runtime(executor="local"))
    assert not (pool.ws.shards_dir / "00000.tar").exists()


@pytest.mark.download
def test_samples_the_writer_drops_are_recorded_and_retried(tmp_path: Path) -> None:
    """img2dataset's writer drops every successful sample whose caption is bytes (json.dumps fails), and
    its stats count them as successes. Run it on such input directly (the stage refuses it up front):
    the promoted shards must list every input row, the dropped ones as not_written failures."""
    pool = make_served_pool(tmp_path / "ws", n=12, per_file=6)
    uids = list(pool.metadata["uid"])
    ws, shards = pool.ws, pool.ws.shards_dir
    cfg = DownloadConfig(samples_per_shard=6, watchdog_seconds=120, **FAST)
    binary = _binary_copies(ws.metadata_files(), tmp_path / "binary")
    shards.mkdir()
    (shards / STAGING_NAME).mkdir()
    try:
        job = make_job(ws, cfg, binary, set(), 0, None, 5, "multiprocessing", None)
        outcome = run_img2dataset(job, shards, [0, 1], cfg.watchdog_seconds)
        assert sorted(outcome.promoted) == [0, 1]
        assert tar_uids(shards) == {}  # nothing was written...
        failures = update_failures(shards)  # ...and every sample is a recorded failure with its reason
        assert sorted(failures["uid"]) == sorted(uids) and set(failures["reason"]) == {"not_written"}
        for name in ("00000", "00001"):
            stats = json.loads((shards / f"{name}_stats.json").read_text())
            assert (stats["count"], stats["successes"], stats["failed_to_write"]) == (6, 0, 6)
        rows = pd.read_parquet(shards / "00000.parquet")
        assert list(rows["key"]) == [f"00000{i:01d}" for i in range(6)] and list(rows["uid"]) == uids[:6]
        assert_shards_whole(shards)
        clear_staging(shards / STAGING_NAME)

        cfg.retry_failed = True  # the metadata in the workspace has string captions: the retry succeeds
        report = download(ws, cfg, Runtime(executor="local"))
    finally:
        pool.server.stop()
    assert report["this_run"]["mode"] == "retry_failed" and report["failures"] == 0
    assert report["successes"] == report["samples"] == 12
    assert set(tar_uids(shards)) == set(uids)
    assert_shards_whole(shards)


@pytest.mark.download
def test_a_dead_server_fails_the_run_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from poolsieve.pipeline.cli import main

    pool = make_served_pool(tmp_path / "ws", n=6, per_file=6)
    pool.server.stop()  # nothing listens on the pool's port any more
    args = ["download", "-w", str(pool.ws.root), "--executor", "local", "--processes", "1", "--threads", "2",
            "--timeout", "2", "--retries", "0", "--image-size", "64", "--samples-per-shard", "6",
            "--allow-network", "127.0.0.1/32"]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"poolsieve download: error: {pool.ws.shards_dir}: only 0.00% of 6 samples were fetched")
    assert "connection=6" in last and "--min-success-rate" in last
    report = json.loads((pool.ws.shards_dir / REPORT_NAME).read_text())
    assert report["success_rate"] == 0.0 and report["shards"] == 1
    assert main([*args, "--min-success-rate", "0"]) == 0  # accepted when asked; nothing fetched again
    with pytest.raises(PoolsieveError, match=r"only 0\.00% of 6"):
        download(pool.ws, DownloadConfig(samples_per_shard=6, min_success_rate=0.5, **FAST), Runtime(executor="local"))
