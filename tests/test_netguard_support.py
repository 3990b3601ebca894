"""A recording HTTP proxy on a loopback address, for the network-guard tests.

It records the request line of every request it receives (``GET http://host/path HTTP/1.1`` and
``CONNECT host:443 HTTP/1.1``). It forwards only to the one loopback origin it is given; every other
target gets a 502 without any connection, so nothing leaves loopback even if the guard under test fails.
A target path ``/redirect`` on the origin is answered by the proxy itself with a 302 to ``redirect_to``
(a redirect the origin could send), so a test can check where the client goes next.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from typing import Any
from urllib.parse import urlsplit


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass

    def do_CONNECT(self) -> None:  # noqa: N802 - http.server naming
        self.server.owner.record(self.requestline)
        self._answer(502, b"no tunnels here\n")

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        owner.record(self.requestline)
        target = urlsplit(self.path)
        if (target.hostname, target.port) != owner.origin:
            self._answer(502, b"not forwarded\n")
            return
        if target.path == "/redirect" and owner.redirect_to:
            self._answer(302, b"", {"Location": owner.redirect_to})
            return
        conn = http.client.HTTPConnection(*owner.origin, timeout=5)
        try:
            conn.request("GET", target.path or "/")
            resp = conn.getresponse()
            self._answer(resp.status, resp.read(), {"Content-Type": resp.getheader("Content-Type", "")})
        finally:
            conn.close()

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: RecordingProxy


class RecordingProxy:
    """``with RecordingProxy("127.0.0.3", origin=("127.0.0.4", port)) as proxy: proxy.url, proxy.lines``."""

    def __init__(self, host: str, origin: tuple[str, int] | None = None, redirect_to: str | None = None):
        self.host, self.origin, self.redirect_to = host, origin, redirect_to
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._server: _ProxyServer | None = None

    def record(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def __enter__(self) -> RecordingProxy:
        self._server = _ProxyServer((self.host, 0), _ProxyHandler)
        self._server.owner = self
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def clear_proxy_env(monkeypatch: Any) -> None:
    """Remove every proxy variable (any case) from the environment for this test."""
    import os

    for name in list(os.environ):
        if name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)
