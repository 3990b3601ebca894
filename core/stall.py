"""Say what a stage waits for when nothing has finished for a long time (instead of hanging in silence).

A stage makes a ``StallWatch`` around its work, calls ``tick()`` whenever something finishes (a chunk
read, a batch encoded, a file written) and gives a ``describe()`` that says what is outstanding.
When no tick came for ``after`` seconds, one line goes to stderr, and again every ``after`` seconds
while nothing moves::

    score: nothing finished for 60 s; waiting for: 2 reader task(s) pending, encoder actor not started; Ray: 0 of 1 CPU free

``after`` defaults to ``$POOLSIEVE_STALL_SECONDS`` or 60 s.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_AFTER = 60.0


def stall_seconds() -> float:
    """The silence after which a stage says what it waits for: ``$POOLSIEVE_STALL_SECONDS`` or 60 s."""
    try:
        value = float(os.environ.get("POOLSIEVE_STALL_SECONDS", DEFAULT_AFTER))
    except ValueError:
        return DEFAULT_AFTER
    return value if value > 0 else DEFAULT_AFTER


class StallWatch:
    """A daemon thread that prints ``describe()`` when ``tick`` was not called for ``after`` seconds."""

    def __init__(self, what: str, describe: Callable[[], str], after: float | None = None,
                 stream: TextIO | None = None):
        self.what, self.describe = what, describe
        self.after = after if after is not None else stall_seconds()
        self.stream = stream
        self.reports = 0
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Something finished: the silence starts again."""
        self._last = time.monotonic()

    def _watch(self) -> None:
        reported = self._last
        while not self._stop.wait(min(1.0, self.after / 4)):
            now = time.monotonic()
            since = max(self._last, reported)
            if now - since < self.after:
                continue
            try:
                what = self.describe()
            except Exception as e:  # noqa: BLE001 - a description that fails must not end the stage
                what = f"(cannot tell: {type(e).__name__}: {e})"
            print(f"{self.what}: nothing finished for {now - self._last:.0f} s; waiting for: {what}",
                  file=self.stream or sys.stderr, flush=True)
            self.reports += 1
            reported = now

    def __enter__(self) -> StallWatch:
        self._thread = threading.Thread(target=self._watch, name=f"{self.what}-stall-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
