"""Issue 13, finding 2: a proxy variable must not switch the network guard off.

A recording proxy listens on 127.0.0.3 and forwards only to one loopback origin; every other target gets
a 502 with no connection made, so nothing leaves loopback even if the guard fails. Before the fix the
proxy received every denied url (and the samples were recorded as successes of whatever it answered).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_download_support import FAST, make_served_pool, tar_uids
from test_netguard_support import RecordingProxy, clear_proxy_env

from poolsieve.core.runtime import Runtime
from poolsieve.core.shapes import draw_shape, encode_jpeg
from poolsieve.pipeline.demo.image_server import ImageServer
from poolsieve.pipeline.download import runner as download_runner
from poolsieve.pipeline.download.failures import FAILURES_NAME
from poolsieve.pipeline.download.netguard import DENIED_MARK, install_guard, uninstall_guard
from poolsieve.pipeline.download.stage import DownloadConfig, download


def _denied_targets(image_port: int, proxy_port: int) -> list[str]:
    return [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.0.0.1/a.jpg",  # private
        "http://100.64.0.1/a.jpg",  # carrier-grade NAT
        f"http://localhost:{image_port}/images/a.jpg",  # a name that resolves to loopback
        f"http://2130706433:{image_port}/images/a.jpg",  # 127.0.0.1 written as one number
        "http://[::ffff:169.254.169.254]/latest/meta-data/",  # IPv4-mapped
        "http://metadata.google.internal/computeMetadata/v1/",
        f"http://127.0.0.3:{proxy_port}/",  # the proxy's own address as a target
        "https://10.0.0.1/a.jpg",  # https: would be a CONNECT
    ]


@pytest.fixture
def served(tmp_path: Path):
    (tmp_path / "images").mkdir()
    data = encode_jpeg(draw_shape("circle", "red", 32, 32, np.random.default_rng(0)))
    (tmp_path / "images" / "a.jpg").write_bytes(data)
    with ImageServer(tmp_path) as origin:
        yield origin, data


@pytest.mark.parametrize("variables", [("http_proxy", "https_proxy"), ("HTTP_PROXY", "HTTPS_PROXY")])
def test_denied_targets_never_reach_the_proxy(served, monkeypatch, variables) -> None:
    origin, data = served
    clear_proxy_env(monkeypatch)
    with RecordingProxy("127.0.0.3", origin=("127.0.0.1", origin.port),
                        redirect_to="http://169.254.169.254/latest/meta-data/") as proxy:
        for name in variables:
            monkeypatch.setenv(name, proxy.url)
        install_guard()  # the default policy: every loopback address is denied, the proxy's too
        try:
            for url in _denied_targets(origin.port, proxy.port):
                key, stream, err = download_runner.fetch_image((1, url), 5, None, None)
                assert stream is None and err.startswith(DENIED_MARK), (url, err)
            assert proxy.lines == [] and origin.requests() == 0

            install_guard(allow=["127.0.0.1/32"])  # the origin is allowed; the proxy (127.0.0.3) is not
            key, stream, err = download_runner.fetch_image((2, f"{origin.url}/images/a.jpg"), 5, None, None)
            assert err is None and stream.read() == data
            # A redirect relayed by the proxy is checked before the proxy is asked for its target.
            key, stream, err = download_runner.fetch_image((3, f"{origin.url}/redirect"), 5, None, None)
            assert stream is None and "169.254.169.254" in err and err.startswith(DENIED_MARK)
        finally:
            uninstall_guard()
    assert proxy.lines == [f"GET {origin.url}/images/a.jpg HTTP/1.1", f"GET {origin.url}/redirect HTTP/1.1"]
    assert origin.requests() == 1


def test_all_proxy_is_not_a_way_around_the_guard(tmp_path: Path, monkeypatch) -> None:
    """urllib does not use all_proxy for http: those urls go direct, and the socket guard applies."""
    clear_proxy_env(monkeypatch)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    with RecordingProxy("127.0.0.3") as proxy, ImageServer(tmp_path, host="127.0.0.2") as denied, \
            ImageServer(tmp_path) as allowed:
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        install_guard(allow=["127.0.0.1/32"])
        try:
            _, stream, err = download_runner.fetch_image((1, f"{denied.url}/images/a.jpg"), 5, None, None)
            assert stream is None and DENIED_MARK in err
            _, stream, err = download_runner.fetch_image((2, f"{allowed.url}/images/a.jpg"), 5, None, None)
            assert err is None and stream.read() == b"x"
        finally:
            uninstall_guard()
        assert proxy.lines == [] and denied.requests() == 0 and allowed.requests() == 1


@pytest.mark.download
def test_download_through_a_proxy_records_denied_samples(tmp_path: Path, monkeypatch) -> None:
    """The whole stage with http_proxy set: denied urls are recorded as denied and never sent to the proxy;
    the allowed ones come through it."""
    clear_proxy_env(monkeypatch)
    pool = make_served_pool(tmp_path / "ws", n=20, per_file=20, host="127.0.0.4")
    uids = list(pool.metadata["uid"])
    try:
        with RecordingProxy("127.0.0.3", origin=("127.0.0.4", pool.server.port)) as proxy:
            targets = _denied_targets(pool.server.port, proxy.port)
            denied = dict(zip(uids[1::2], targets, strict=False))
            meta_file = pool.ws.metadata_files()[0]
            df = pd.read_parquet(meta_file)
            df["url"] = [denied.get(u, url) for u, url in zip(df["uid"], df["url"], strict=True)]
            df.to_parquet(meta_file, index=False)
            monkeypatch.setenv("http_proxy", proxy.url)
            monkeypatch.setenv("https_proxy", proxy.url)
            cfg = DownloadConfig(samples_per_shard=10, **{**FAST, "allow_networks": ["127.0.0.4/32"]})
            report = download(pool.ws, cfg, Runtime(executor="local"))
            lines = proxy.lines
        failures = pd.read_parquet(pool.ws.shards_dir / FAILURES_NAME)
        assert dict(zip(failures["uid"], failures["reason"], strict=True)) == dict.fromkeys(denied, "denied")
        assert failures["error_message"].str.contains(DENIED_MARK).all()
        assert report["denied"] == len(denied) == len(targets)
        fetched = set(uids) - set(denied)
        assert set(tar_uids(pool.ws.shards_dir)) == fetched
        assert sorted(lines) == sorted(f"GET {pool.server.url}/images/{u}.jpg HTTP/1.1" for u in fetched)
        assert pool.server.requests() == len(fetched)
    finally:
        pool.server.stop()
