"""Issue 13, finding 3: only http and https urls are fetched. Before the fix a ``file://`` url to a local
JPEG was copied into a shard and ``file:///etc/hostname`` was read (then failed to decode)."""

from __future__ import annotations

import base64
import urllib.error
from pathlib import Path

import pandas as pd
import pytest
from test_download_support import FAST, make_served_pool, tar_uids
from test_netguard_support import RecordingProxy, clear_proxy_env

from poolsieve.core.runtime import Runtime
from poolsieve.pipeline.download import runner as download_runner
from poolsieve.pipeline.download.failures import FAILURES_NAME
from poolsieve.pipeline.download.netguard import (
    DENIED_MARK,
    NetworkPolicy,
    build_opener,
    install_guard,
    uninstall_guard,
)
from poolsieve.pipeline.download.stage import DownloadConfig, download


def _local_jpeg(tmp_path: Path) -> Path:
    import numpy as np

    from poolsieve.core.shapes import draw_shape, encode_jpeg

    path = tmp_path / "secret.jpg"
    path.write_bytes(encode_jpeg(draw_shape("square", "blue", 48, 48, np.random.default_rng(1))))
    return path


def test_fetch_refuses_other_schemes(tmp_path: Path, monkeypatch) -> None:
    clear_proxy_env(monkeypatch)
    jpeg = _local_jpeg(tmp_path)
    urls = ["file:///etc/hostname", jpeg.as_uri(), f"FILE://localhost{jpeg}", "ftp://127.0.0.1/a.jpg",
            "data:image/jpeg;base64," + base64.b64encode(jpeg.read_bytes()).decode(), "jar:file:///x.jar!/a",
            str(jpeg)]
    install_guard(allow=["127.0.0.1/32"])
    try:
        for url in urls:
            key, stream, err = download_runner.fetch_image((5, url), 5, None, None)
            assert key == 5 and stream is None and err.startswith(f"{DENIED_MARK}: url scheme"), (url, err)
    finally:
        uninstall_guard()


def test_the_opener_has_no_handler_for_files_ftp_or_data(tmp_path: Path) -> None:
    """Even a url that got past the scheme check could not be read: the opener only speaks http(s)."""
    opener = build_opener(NetworkPolicy(), {})
    for url in (_local_jpeg(tmp_path).as_uri(), "ftp://127.0.0.1/a.jpg", "data:text/plain,hello"):
        with pytest.raises(urllib.error.URLError, match="unknown url type"):
            opener.open(url, timeout=2)


def test_redirects_to_other_schemes_are_refused(tmp_path: Path, monkeypatch) -> None:
    """A server's 302 to file:// or ftp:// (urllib itself follows ftp redirects) is not followed."""
    clear_proxy_env(monkeypatch)
    jpeg = _local_jpeg(tmp_path)
    (tmp_path / "images").mkdir()
    from poolsieve.pipeline.demo.image_server import ImageServer

    with ImageServer(tmp_path) as origin:
        for target in (jpeg.as_uri(), "ftp://127.0.0.1/a.jpg"):
            # The recording proxy plays the origin's part here: it answers /redirect with a 302.
            with RecordingProxy("127.0.0.1", origin=("127.0.0.1", origin.port), redirect_to=target) as proxy:
                monkeypatch.setenv("http_proxy", proxy.url)
                install_guard(allow=["127.0.0.1/32"])
                try:
                    _, stream, err = download_runner.fetch_image((1, f"{origin.url}/redirect"), 5, None, None)
                finally:
                    uninstall_guard()
                assert stream is None and err.startswith(f"{DENIED_MARK}: url scheme"), err
                assert proxy.lines == [f"GET {origin.url}/redirect HTTP/1.1"]


@pytest.mark.download
def test_download_records_non_http_urls_as_refused(tmp_path: Path, monkeypatch) -> None:
    """The whole stage: a pool row with file:///etc/hostname and one with a file:// url to a local JPEG
    (plus ftp:, data: and a bare path) are recorded as denied; nothing of them reaches a shard."""
    clear_proxy_env(monkeypatch)
    jpeg = _local_jpeg(tmp_path)
    pool = make_served_pool(tmp_path / "ws", n=12, per_file=12)
    uids = list(pool.metadata["uid"])
    refused = dict(zip(uids[::2], [
        "file:///etc/hostname", jpeg.as_uri(), f"ftp://127.0.0.1:{pool.server.port}/images/{uids[0]}.jpg",
        "data:image/jpeg;base64," + base64.b64encode(jpeg.read_bytes()).decode(), str(jpeg),
        f"file://localhost{jpeg}"], strict=True))
    try:
        meta_file = pool.ws.metadata_files()[0]
        df = pd.read_parquet(meta_file)
        df["url"] = [refused.get(u, url) for u, url in zip(df["uid"], df["url"], strict=True)]
        df.to_parquet(meta_file, index=False)
        report = download(pool.ws, DownloadConfig(samples_per_shard=12, **FAST), Runtime(executor="local"))
        failures = pd.read_parquet(pool.ws.shards_dir / FAILURES_NAME)
        assert dict(zip(failures["uid"], failures["reason"], strict=True)) == dict.fromkeys(refused, "denied")
        assert failures["error_message"].str.contains("url scheme .* is refused", regex=True).all()
        assert report["denied"] == len(refused) and report["successes"] == len(uids) - len(refused)
        assert set(tar_uids(pool.ws.shards_dir)) == set(uids) - set(refused)
        assert pool.server.requests() == len(uids) - len(refused)  # the ftp url did not reach the server either
    finally:
        pool.server.stop()
