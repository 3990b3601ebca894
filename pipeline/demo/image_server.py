"""A small threaded HTTP server for the built-in pool's images, with optional fault injection.

``poolsieve generate`` writes ``<workspace>/synthetic/images/{uid}.jpg`` and urls
``{base_url}/images/{uid}.jpg``; this server answers those urls on 127.0.0.1 so that the download stage
fetches them over HTTP with img2dataset exactly as it would fetch the web.

    python -m poolsieve.pipeline.demo.image_server WORKSPACE --host 127.0.0.1 --port 8765

``serve_command`` writes that line for a pool generated with a given ``base_url`` (host, port and any
path prefix of the urls), as ``poolsieve generate`` prints it.

For tests, ``faults`` maps a url path (``/images/<uid>.jpg``) to a misbehaviour (see ``FAULTS``); the
mapping can be changed while the server runs (``set_faults`` / ``clear_faults``: "the server recovers").
Every request is counted per path, so a test can assert which urls were (never) fetched.
"""

from __future__ import annotations

import argparse
import http.server
import io
import shlex
import shutil
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.workspace import Workspace

FAULTS = {
    "http_404": "answer 404 Not Found",
    "http_500": "answer 500 Internal Server Error",
    "hang": "accept the request and never answer (until the server stops)",
    "trickle": "send the image one byte every 0.2 s (a slow trickle that defeats per-read timeouts)",
    "truncated": "send only the first bytes of the JPEG (it cannot be decoded)",
    "not_image": "send an HTML page with status 200",
    "bomb": "send a tiny JPEG whose header declares 50000 x 50000 pixels (a decompression bomb)",
    "redirect_loop": "answer 302 with a Location pointing at the same url",
    "reset": "close the connection without answering",
}


def _is_sof(marker: int) -> bool:
    return 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)


def declare_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF) of a JPEG so that it declares ``width`` x ``height`` pixels."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker sequence")
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if _is_sof(marker):
            # SOF payload: precision (1 byte), height (2), width (2), ...
            return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]
        i += 2 + length
    raise ValueError("no SOF marker in JPEG")


def bomb_jpeg(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few hundred bytes of JPEG that declare a huge image (decoding would need gigabytes)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="JPEG", quality=50)
    return declare_jpeg_size(buf.getvalue(), width, height)


def truncate_jpeg(data: bytes) -> bytes:
    """The JPEG's bytes cut off before the frame header: no decoder can make an image of it."""
    i = 2
    while i + 4 <= len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if _is_sof(marker):
            return data[:i + 4]
        i += 2 + length
    return data[: max(2, len(data) // 8)]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        if self.server.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    # ------------------------------------------------------------------------------------------
    def _answer(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        owner = self.server.owner
        owner._count(path)
        if owner.latency and owner.stopping.wait(owner.latency):
            return
        fault = owner.fault_for(path)
        if fault is not None and self._inject(fault, path, head):
            return
        file = owner.resolve(path)
        if file is None:
            self._send(404, b"not found\n", "text/plain", head)
            return
        self._send(200, file.read_bytes(), "image/jpeg" if file.suffix.lower() in (".jpg", ".jpeg") else
                   "application/octet-stream", head)

    def _send(self, status: int, body: bytes, content_type: str, head: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _inject(self, fault: str, path: str, head: bool) -> bool:
        """Misbehave as ``fault`` says; return False to answer normally after all."""
        owner = self.server.owner
        if fault == "http_404":
            self._send(404, b"not found\n", "text/plain", head)
        elif fault == "http_500":
            self._send(500, b"internal error\n", "text/plain", head)
        elif fault == "hang":
            owner.stopping.wait()
            self.close_connection = True
        elif fault == "reset":
            self.close_connection = True
        elif fault == "not_image":
            self._send(200, b"<html><body>Sorry, this page is not an image.</body></html>\n", "text/html", head)
        elif fault == "bomb":
            self._send(200, bomb_jpeg(), "image/jpeg", head)
        elif fault == "redirect_loop":
            self._send(302, b"", "text/plain", head, {"Location": path})
        elif fault in ("truncated", "trickle"):
            file = owner.resolve(path)
            if file is None:
                return False
            data = file.read_bytes()
            if fault == "truncated":
                self._send(200, truncate_jpeg(data), "image/jpeg", head)
                return True
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for b in data:
                    if owner.stopping.wait(owner.trickle_interval):
                        break
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up: that is the point
            self.close_connection = True
        else:
            raise ValueError(f"unknown fault {fault!r}")
        return True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: ImageServer
    verbose: bool = False


class ImageServer:
    """Serve files under ``root`` (e.g. ``<workspace>/synthetic``) over HTTP on ``host:port``.

    Use as a context manager (``with ImageServer(root) as srv: srv.url``) or call ``start``/``stop``.
    ``port=0`` picks a free port. ``prefix`` (``/pool``) is a url path in front of the files' paths, for
    urls made with a ``base_url`` that has one.
    """

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0,
                 faults: dict[str, str] | None = None, verbose: bool = False, trickle_interval: float = 0.2,
                 latency: float = 0.0, prefix: str = ""):
        self.root = Path(root).resolve()
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.latency = latency  # seconds to wait before answering each request (a slow web)
        self.host, self.port = host, port
        self.trickle_interval = trickle_interval
        self.stopping = threading.Event()
        self._faults: dict[str, str] = {}
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.verbose = verbose
        self.set_faults(faults or {})

    # ---------------------------------------------------------------- faults and counts
    def set_faults(self, faults: dict[str, str]) -> None:
        unknown = sorted(set(faults.values()) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._faults = {self._key(p): f for p, f in faults.items()}

    def clear_faults(self) -> None:
        self.set_faults({})

    def fault_for(self, path: str) -> str | None:
        with self._lock:
            return self._faults.get(path)

    @staticmethod
    def _key(path_or_url: str) -> str:
        return unquote(urlsplit(path_or_url).path) if "://" in path_or_url else path_or_url

    def _count(self, path: str) -> None:
        with self._lock:
            self._counts[path] += 1

    def requests(self, path_or_url: str | None = None) -> int:
        """Requests seen in total, or for one path (or url)."""
        with self._lock:
            if path_or_url is None:
                return sum(self._counts.values())
            return self._counts[self._key(path_or_url)]

    def resolve(self, path: str) -> Path | None:
        """The file a url path names, or None (missing, outside ``root``, or not under the prefix)."""
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return None
            path = path[len(self.prefix):]
        candidate = (self.root / path.lstrip("/")).resolve()
        if self.root not in candidate.parents or not candidate.is_file():
            return None
        return candidate

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    def start(self) -> ImageServer:
        if not self.root.is_dir():
            raise InputError(self.root, "nothing to serve: folder does not exist (run `poolsieve generate`)")
        self.stopping.clear()
        self._server = _Server((self.host, self.port), _Handler)
        self._server.owner = self
        self._server.verbose = self.verbose
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"image-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for a server started soon after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_root(workspace_or_folder: str | Path) -> Path:
    """``<workspace>/synthetic`` if it exists, else the folder itself."""
    p = Path(workspace_or_folder)
    return Workspace(p).synthetic_dir if Workspace(p).synthetic_dir.is_dir() else p


def serve_command(folder: str | Path, base_url: str) -> str:
    """The shell command that serves ``folder`` where urls made with ``base_url`` point: its host, its port
    (the scheme's default when the url names none) and its path prefix. The interpreter is ``python`` when
    that is the one running now, else this one's path, so the line works as it is copied."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"base url {base_url!r}: the image server answers http://HOST[:PORT][/PREFIX] urls")
    python = "python" if shutil.which("python") == sys.executable else shlex.quote(sys.executable)
    argv = [str(folder), "--host", parts.hostname, "--port", str(parts.port or 80)]
    if parts.path.strip("/"):
        argv += ["--prefix", "/" + parts.path.strip("/")]
    return f"{python} -m poolsieve.pipeline.demo.image_server " + " ".join(shlex.quote(a) for a in argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poolsieve.pipeline.demo.image_server",
                                     description="Serve a workspace's synthetic images over HTTP on 127.0.0.1.")
    parser.add_argument("workspace", type=Path, help="workspace (serves its synthetic/ folder) or any folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--prefix", default="", help="url path in front of images/... (a --base-url with a path)")
    parser.add_argument("--fault", action="append", default=[], metavar="PATH=KIND",
                        help=f"inject a fault for one url path; kinds: {', '.join(FAULTS)}")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    faults = dict(f.split("=", 1) for f in args.fault)
    server = ImageServer(serve_root(args.workspace), args.host, args.port, faults, verbose=args.verbose,
                         latency=args.latency, prefix=args.prefix)
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - one line for the user
        print(f"image_server: error: {e}", file=sys.stderr)
        return 2
    print(f"serving {server.root} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
