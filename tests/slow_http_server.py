"""A hostile HTTP server on 127.0.0.1 for the fetch-deadline tests: it answers, but slowly.

* ``/slow-headers/...``: the status line and then an endless header, one byte every ``interval``
  seconds (each byte arrives well inside any per-read timeout, so only a deadline over the whole
  request ends the fetch);
* ``/hop/N/...``: a 302 to ``/hop/N+1/...``, its bytes sent one every ``hop_interval`` seconds (each
  hop is quick enough alone; the chain is not);
* ``/hang-body/...``: headers at once, then a body one byte every ``interval`` seconds.

With ``tls`` (a server ``SSLContext``) it speaks HTTPS; with ``stall_handshake`` too, it accepts the TCP
connection and never answers the TLS handshake.

A connection is dropped after ``max_seconds`` at most, so a client without a deadline is stuck that long,
not forever. The server records how long each connection stayed open (until the client gave up), so a
test can check when the client stopped.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time


class SlowServer:
    def __init__(self, interval: float = 0.5, hop_interval: float = 0.02, max_seconds: float = 120.0,
                 tls: ssl.SSLContext | None = None, stall_handshake: bool = False):
        self.interval, self.hop_interval, self.max_seconds = interval, hop_interval, max_seconds
        self.tls, self.stall_handshake = tls, stall_handshake
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.connections: list[tuple[str, float]] = []  # (request path, seconds the connection stayed open)
        self.paths: list[str] = []  # every request path, as it arrives
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> SlowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SlowServer:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._listener.close()

    def durations(self, prefix: str) -> list[float]:
        """How long each finished connection for a path under ``prefix`` stayed open."""
        with self._lock:
            return [d for path, d in self.connections if path.startswith(prefix)]

    def requests(self, prefix: str) -> int:
        with self._lock:
            return sum(path.startswith(prefix) for path in self.paths)

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        start = time.monotonic()
        path = ""
        try:
            conn.settimeout(10)
            if self.tls is not None:
                if self.stall_handshake:
                    self._stop.wait(self.max_seconds)
                    return
                conn = self.tls.wrap_socket(conn, server_side=True)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                request += data
            path = request.split(b" ", 2)[1].decode("ascii", "replace")
            with self._lock:
                self.paths.append(path)
            if path.startswith("/hop/"):
                n = int(path.split("/")[2])
                rest = "/".join(path.split("/")[3:])
                answer = f"HTTP/1.1 302 Found\r\nLocation: /hop/{n + 1}/{rest}\r\nContent-Length: 0\r\n\r\n"
                self._trickle(conn, answer.encode(), self.hop_interval, start)
            elif path.startswith("/hang-body/"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
                self._trickle(conn, b"\xff" * 100000, self.interval, start)
            else:  # /slow-headers/ and anything else
                self._trickle(conn, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60000, self.interval, start)
        except OSError:
            pass  # the client hung up: what a deadline does
        finally:
            conn.close()
            with self._lock:
                self.connections.append((path, time.monotonic() - start))

    def _trickle(self, conn: socket.socket, data: bytes, interval: float, start: float) -> None:
        for i in range(len(data)):
            if self._stop.is_set() or time.monotonic() - start > self.max_seconds:
                return
            conn.sendall(data[i:i + 1])
            if self._stop.wait(interval):
                return
