"""The network deny list, the fetch limits of the download workers, and the download CLI's options."""

from __future__ import annotations

import io
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_netguard_support import clear_proxy_env

from poolsieve.core.errors import ConfigError
from poolsieve.core.shapes import draw_shape, encode_jpeg
from poolsieve.pipeline.demo.image_server import ImageServer, bomb_jpeg
from poolsieve.pipeline.download import runner as download_runner
from poolsieve.pipeline.download.netguard import (
    DEFAULT_DENY_NETWORKS,
    DeniedAddressError,
    NetworkPolicy,
    install_guard,
    uninstall_guard,
)


def test_deny_list_matches_networks_and_names() -> None:
    deny = NetworkPolicy(allow=["127.0.0.1/32"])
    assert deny.reason_for_url("http://169.254.169.254/latest/meta-data/")
    assert deny.reason_for_url("http://[fd00:ec2::254]/latest")
    assert deny.reason_for_url("http://[::ffff:169.254.169.254]/x")  # IPv4-mapped IPv6
    assert deny.reason_for_url("http://metadata.google.internal/computeMetadata/v1/")
    assert deny.reason_for_url("http://100.100.100.200/latest")
    assert deny.reason_for_url("http://127.0.0.2:8080/a.jpg")  # loopback, but not the allowed address
    assert deny.reason_for_url("http://127.0.0.1:8080/a.jpg") is None
    assert deny.reason_for_url("https://example.com/a.jpg") is None
    assert deny.reason_for_url("not a url").startswith("poolsieve-denied: url scheme")
    assert NetworkPolicy().reason_for_url("http://127.0.0.1:8080/a.jpg")  # denied unless allowed
    assert set(DEFAULT_DENY_NETWORKS) >= {"10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "fc00::/7", "::1/128"}
    with pytest.raises(ConfigError, match="not a network"):
        NetworkPolicy(["10.0.0.0/33"])


def test_guard_refuses_denied_connections_before_any_packet(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    with ImageServer(tmp_path) as allowed, ImageServer(tmp_path, host="127.0.0.2") as denied:
        install_guard(allow=["127.0.0.1/32"])
        try:
            with pytest.raises(urllib.error.URLError, match="poolsieve-denied"):
                urllib.request.urlopen(f"{denied.url}/images/a.jpg", timeout=5)
            with pytest.raises(DeniedAddressError), socket.socket() as s:
                s.connect(("127.0.0.2", denied.port))
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", allowed.port)) == 0
            assert urllib.request.urlopen(f"{allowed.url}/images/a.jpg", timeout=5).read() == b"x"
            install_guard()  # the default policy: 127.0.0.1 is loopback too
            with pytest.raises(DeniedAddressError), socket.socket() as s:
                s.connect(("127.0.0.1", allowed.port))
            with pytest.raises(DeniedAddressError, match="host 2130706433 resolves to 127.0.0.1, which is in"):
                socket.getaddrinfo("2130706433", allowed.port)  # the guard judges what a name resolves to
        finally:
            uninstall_guard()
        assert denied.requests() == 0 and allowed.requests() == 1
        assert urllib.request.urlopen(f"{denied.url}/images/a.jpg", timeout=5).read() == b"x"


def test_fetch_limits_and_bomb_check(tmp_path: Path, monkeypatch) -> None:
    clear_proxy_env(monkeypatch)
    monkeypatch.setattr(download_runner, "_limits", {})  # the worker's limits, restored after the test
    (tmp_path / "images").mkdir()
    data = encode_jpeg(draw_shape("circle", "red", 64, 64, np.random.default_rng(0)))
    (tmp_path / "images" / "a.jpg").write_bytes(data)
    faults = {"/images/b.jpg": "trickle"}
    with ImageServer(tmp_path, faults=faults, trickle_interval=0.05) as srv:
        (tmp_path / "images" / "b.jpg").write_bytes(data)
        install_guard(allow=["127.0.0.1/32"])
        try:
            download_runner._limits.update(fetch_deadline=0.5, max_image_bytes=1 << 20)
            key, stream, err = download_runner.fetch_image((7, f"{srv.url}/images/a.jpg"), 5, None, None)
            assert key == 7 and err is None and stream.read() == data
            key, stream, err = download_runner.fetch_image((8, f"{srv.url}/images/b.jpg"), 5, None, None)
            assert stream is None and "deadline exceeded" in err
            download_runner._limits.update(fetch_deadline=30, max_image_bytes=100)
            _, stream, err = download_runner.fetch_image((9, f"{srv.url}/images/a.jpg"), 5, None, None)
            assert stream is None and "too large" in err
        finally:
            uninstall_guard()
        _, stream, err = download_runner.fetch_image((10, f"{srv.url}/images/a.jpg"), 5, None, None)
        assert stream is None and "poolsieve-denied" in err  # no policy installed: the default one applies

    class Passthrough:
        def __call__(self, stream, bbox=None):
            return "decoded", 1, 1, 1, 1, None

    resizer = download_runner.BombCheckingResizer(Passthrough(), max_image_area=10_000 * 10_000)
    assert resizer(io.BytesIO(bomb_jpeg(50_000, 50_000)))[-1].startswith("image area too large")
    assert resizer(io.BytesIO(bomb_jpeg(12_000, 9_000)))[-1] == "image area too large: header declares 12000x9000 pixels"
    assert resizer(io.BytesIO(data))[0] == "decoded"
    assert resizer(io.BytesIO(b"<html>"))[-1].startswith("Image decoding error")  # refused before the decoder


def test_cli_flags_override_the_config_section(tmp_path: Path) -> None:
    from poolsieve.pipeline.cli import make_context, run_stage, stage_parser
    from poolsieve.pipeline.download import stage as download

    config = tmp_path / "poolsieve.yaml"
    config.write_text("download: {threads: 3, samples_per_shard: 7, deny_networks: ['10.0.0.0/8']}\n")
    parser = stage_parser("download")
    src = tmp_path / "src"
    src.mkdir()
    pd.DataFrame({"uid": ["ab" * 16], "url": ["http://127.0.0.1:1/a.jpg"], "text": ["a"]}).to_parquet(
        src / "00000.parquet")
    args = parser.parse_args(["-w", str(tmp_path / "ws"), "-c", str(config), "--threads", "5",
                              "--metadata-source", str(src), "--skip-shards", "--executor", "local"])
    ctx = make_context(args)
    cfg = download.STAGE.config_from(ctx.section("download"), args)
    assert (cfg.threads, cfg.samples_per_shard, cfg.deny_networks) == (5, 7, ["10.0.0.0/8"])
    assert cfg.image_size == 512 and cfg.resize_mode == "keep_ratio_largest" and cfg.retries == 2
    assert cfg.blur_faces is True and cfg.retry_failed is False
    assert run_stage(download.STAGE, ctx, args) == 0
    assert (tmp_path / "ws" / "metadata" / "00000.parquet").exists()
    config.write_text("download: {resize_mode: stretch}\n")
    with pytest.raises(ConfigError, match="resize_mode"):
        run_stage(download.STAGE, make_context(args), args)
