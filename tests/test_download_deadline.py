"""The fetch deadline bounds the whole request: connect, status line and headers, every redirect hop,
body. A server that sends its headers one byte per 0.5 s (each byte well inside the per-read timeout),
or redirects slowly hop after hop, fails that url alone, recorded as ``deadline``; every other sample
of its shard is written, a second shard is unaffected, and a rerun does not hang."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from slow_http_server import SlowServer
from test_download_support import FAST, assert_shards_whole, make_served_pool, tar_uids
from test_netguard_support import clear_proxy_env

from poolsieve.core.runtime import Runtime
from poolsieve.pipeline.download import runner as download_runner
from poolsieve.pipeline.download.failures import FAILURES_NAME, failure_reason
from poolsieve.pipeline.download.netguard import install_guard, uninstall_guard
from poolsieve.pipeline.download.stage import DownloadConfig, download


@pytest.fixture
def guarded(monkeypatch):
    import img2dataset.downloader  # noqa: F401 - imported once here, not inside a timed fetch

    clear_proxy_env(monkeypatch)
    monkeypatch.setattr(download_runner, "_limits", {"fetch_deadline": 1.0, "max_image_bytes": 1 << 20})
    install_guard(allow=["127.0.0.1/32"])
    yield
    uninstall_guard()


def _fetch(url: str, timeout: float = 5.0) -> tuple[str | None, float]:
    start = time.monotonic()
    _, stream, err = download_runner.fetch_image((0, url), timeout, None, None)
    assert stream is None
    return err, time.monotonic() - start


@pytest.mark.parametrize("path", ["/slow-headers/a.jpg", "/hop/0/a.jpg", "/hang-body/a.jpg"])
def test_a_slow_server_is_stopped_at_the_deadline(guarded, path: str) -> None:
    with SlowServer(interval=0.5, hop_interval=0.01, max_seconds=20) as server:
        err, seconds = _fetch(server.url + path)
        assert err is not None and "deadline exceeded" in err, err
        assert failure_reason("failed_to_download", err) == "deadline"
        assert seconds < 1.0 + 1.0, seconds  # the 1 s deadline, give or take scheduling
        if path.startswith("/hop/"):  # several hops were made: the clock ran across them
            assert server.requests("/hop/") >= 2


def test_each_hop_alone_is_quick_but_the_chain_is_not(guarded, monkeypatch) -> None:
    """Every hop takes ~0.35 s, well inside a 1 s deadline; a clock per hop would follow all 10 hops."""
    with SlowServer(hop_interval=0.005) as server:
        err, seconds = _fetch(server.url + "/hop/0/a.jpg")
        assert failure_reason("failed_to_download", err) == "deadline", err  # not a redirect loop after 10 hops
        assert seconds < 2.0 and 2 <= server.requests("/hop/") <= 4


TLS_PEM = Path(__file__).parent / "data" / "loopback_tls.pem"  # self-signed for 127.0.0.1, made for these tests


@pytest.fixture
def trusted_tls(monkeypatch) -> ssl.SSLContext:
    """A server context for 127.0.0.1; the fetch's default client context trusts it (and nothing else)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(TLS_PEM)
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda *a, **k: ssl.create_default_context(cafile=TLS_PEM))
    return server


@pytest.mark.parametrize("stall_handshake", [False, True], ids=["slow-headers", "silent-handshake"])
def test_https_keeps_to_the_deadline_too(guarded, trusted_tls, stall_handshake: bool) -> None:
    with SlowServer(interval=0.5, max_seconds=20, tls=trusted_tls, stall_handshake=stall_handshake) as server:
        err, seconds = _fetch(server.url + "/slow-headers/a.jpg")
        assert failure_reason("failed_to_download", err) == "deadline", err
        assert seconds < 1.0 + 1.0, seconds


def test_a_good_https_image_is_fetched_whole(guarded, trusted_tls, tmp_path) -> None:
    """The clocked connections are urllib's own: TLS verified, body whole."""
    import http.server

    body = bytes(range(256)) * 1000

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = trusted_tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        _, stream, err = download_runner.fetch_image((0, f"https://127.0.0.1:{httpd.server_port}/a.jpg"), 5, None, None)
        assert err is None and stream.read() == body
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.download
def test_two_slow_urls_among_40_fail_alone_and_the_shards_are_written(tmp_path: Path) -> None:
    pool = make_served_pool(tmp_path / "ws", n=40, per_file=40)
    uids = list(pool.metadata["uid"])
    slow = {uids[3]: "/slow-headers/", uids[11]: "/hop/0/"}  # both in the first shard of 20
    with SlowServer(interval=0.5, hop_interval=0.02, max_seconds=300) as server:
        for meta_file in pool.ws.metadata_files():
            df = pd.read_parquet(meta_file)
            for uid, prefix in slow.items():
                df.loc[df["uid"] == uid, "url"] = f"{server.url}{prefix}{uid}.jpg"
            df.to_parquet(meta_file, index=False)
        cfg = DownloadConfig(samples_per_shard=20, watchdog_seconds=40, **FAST)  # fetch deadline 3 s
        try:
            start = time.monotonic()
            report = download(pool.ws, cfg, Runtime(executor="local"))
            first_run = time.monotonic() - start
            shards = pool.ws.shards_dir
            failures = pd.read_parquet(shards / FAILURES_NAME)
            assert dict(zip(failures["uid"], failures["reason"], strict=True)) == dict.fromkeys(slow, "deadline")
            assert report["shards"] == 2 and report["missing_shards"] == [] and report["successes"] == 38
            in_tars = tar_uids(shards)
            assert set(in_tars) == set(uids) - set(slow)  # the 18 good samples of the slow urls' shard too
            assert set(pd.read_parquet(shards / "00001.parquet")["status"]) == {"success"}  # the other shard
            assert_shards_whole(shards)
            # The server saw each slow fetch end near the 3 s deadline (plus its own 0.5 s to notice).
            assert max(server.durations("/slow-headers/")) < 3.0 + 2.5
            assert sum(server.durations("/hop/")) < 3.0 + 2.5

            # A rerun of the failed samples meets the same server and ends the same way, without hanging.
            cfg.retry_failed = True
            start = time.monotonic()
            again = download(pool.ws, cfg, Runtime(executor="local"))
            assert again["failures_by_reason"] == {"deadline": 2}
            assert time.monotonic() - start < first_run + 30
        finally:
            server.stop()
            pool.server.stop()
