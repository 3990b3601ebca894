"""One clock per url: the whole fetch (connect, status line and headers, each redirect hop, body) ends by
its deadline. Used by the download's workers (``pipeline/download/netguard.py``) and by the pinned
assets' fetch (``core/pinned_assets.py``).

A socket timeout bounds one read, not a request: ``http.client`` reads up to 100 header lines of 64 KiB,
so a server that sends one header byte every half second holds a plain ``urlopen`` for as long as it
likes, and each redirect hop starts such a wait anew. Here every blocking step waits at most what is
left of the url's clock (and at most the per-read ``timeout``):

* each connection (every redirect hop's, a proxy's CONNECT tunnel included) connects within what is
  left, and a TLS handshake runs within what is left after the connect;
* every read of the response (status line, headers, body) is one ``recv`` given at most what is left,
  so a trickle ends when the clock does, however slowly it trickles.

The connection classes are urllib's own, so proxies, TLS and redirects behave as urllib's do.
What the clock cannot bound: one DNS lookup (``getaddrinfo`` blocks in the C library; the resolver's
own timeout ends it) and the sending of the small request. ``FetchDeadlineExceeded`` (a
``TimeoutError``) says "download deadline exceeded", which the failure report counts as ``deadline``.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

DEADLINE_MARK = "download deadline exceeded"
_SLACK = 0.01  # seconds: a socket wait cut to what was left ends at most this early by the clock


class FetchDeadlineExceeded(TimeoutError):
    """The url's whole fetch took longer than its deadline."""


class FetchClock:
    """The time one url's fetch has left, across its redirect hops."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.ends = time.monotonic() + self.seconds

    def left(self, during: str) -> float:
        """Seconds left; ``FetchDeadlineExceeded`` (naming what was under way) when none are."""
        remaining = self.ends - time.monotonic()
        if remaining <= 0:
            raise self._exceeded(during)
        return remaining

    def _exceeded(self, during: str) -> FetchDeadlineExceeded:
        return FetchDeadlineExceeded(f"{DEADLINE_MARK}: the whole fetch (connect, headers, redirects, body) "
                                     f"took over {self.seconds:g}s, {during}")

    @contextlib.contextmanager
    def watch(self, during: str) -> Iterator[None]:
        """A timeout in the block is ``FetchDeadlineExceeded`` when it was the clock that ran out."""
        try:
            yield
        except FetchDeadlineExceeded:
            raise
        except TimeoutError:
            if self.ends - time.monotonic() < _SLACK:  # the wait was cut to what was left, and it all went
                raise self._exceeded(during) from None
            raise

    def bound(self, timeout: Any, during: str) -> float:
        """``timeout`` (a number, or anything else for no per-step limit) cut down to what is left."""
        left = self.left(during)
        return min(float(timeout), left) if isinstance(timeout, (int, float)) else left


class _ClockedReader(io.RawIOBase):
    """A socket's byte stream in which each ``recv`` waits at most what is left of the clock."""

    def __init__(self, sock: Any, clock: FetchClock, timeout: float | None):
        super().__init__()
        self._sock, self._clock, self._timeout = sock, clock, timeout
        self._raw = sock.makefile("rb", buffering=0)  # counts as a reference: the socket stays open for it

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self._clock.bound(self._timeout, "reading the response"))
        with self._clock.watch("reading the response"):
            return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _ClockedSocket:
    """What ``HTTPResponse`` is given instead of the socket: its ``makefile`` reads by the clock."""

    def __init__(self, sock: Any, clock: FetchClock, timeout: float | None):
        self._sock, self._clock, self._timeout = sock, clock, timeout

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_ClockedReader(self._sock, self._clock, self._timeout))


def _clocked_response(sock: Any, *args: Any, clock: FetchClock, timeout: float | None,
                      **kwargs: Any) -> http.client.HTTPResponse:
    return http.client.HTTPResponse(_ClockedSocket(sock, clock, timeout), *args, **kwargs)  # type: ignore[arg-type]


class _Clocked:
    """What both clocked connections share: the clock, and responses read through it."""

    def __init__(self, *args: Any, clock: FetchClock, **kwargs: Any):
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.clock = clock
        self.response_class = functools.partial(_clocked_response, clock=clock, timeout=self.timeout)


class _ClockedHTTPConnection(_Clocked, http.client.HTTPConnection):
    """``HTTPConnection`` whose connect and reads (a CONNECT tunnel's too) keep to ``clock``."""

    def connect(self) -> None:
        self.timeout = self.clock.bound(self.timeout, "connecting")
        with self.clock.watch("connecting"):
            super().connect()


class _ClockedHTTPSConnection(_Clocked, http.client.HTTPSConnection):
    """``HTTPSConnection`` whose connect, TLS handshake and reads keep to ``clock``."""

    def connect(self) -> None:
        self.timeout = self.clock.bound(self.timeout, "connecting")
        with self.clock.watch("connecting"):
            http.client.HTTPConnection.connect(self)  # TCP (and a proxy's tunnel); HTTPSConnection's TLS below
        self.sock.settimeout(self.clock.bound(self.timeout, "in the TLS handshake"))
        with self.clock.watch("in the TLS handshake"):
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self._tunnel_host or self.host)


_CLOCKED = {http.client.HTTPConnection: _ClockedHTTPConnection, http.client.HTTPSConnection: _ClockedHTTPSConnection}


class ClockedHTTPHandler(urllib.request.HTTPHandler):
    """urllib's http handler; every connection it makes keeps to ``clock``."""

    def __init__(self, clock: FetchClock):
        super().__init__()
        self.clock = clock

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(functools.partial(_CLOCKED[http_class], clock=self.clock), req, **kwargs)


class ClockedHTTPSHandler(urllib.request.HTTPSHandler):
    """urllib's https handler; every connection it makes keeps to ``clock``."""

    def __init__(self, clock: FetchClock):
        super().__init__()
        self.clock = clock

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(functools.partial(_CLOCKED[http_class], clock=self.clock), req, **kwargs)
