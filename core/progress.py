"""Progress (count, rate, ETA) for long work, in place on a terminal, and the one-screen summary at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from tqdm import tqdm


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Progress of long work: ``desc: done/total units | rate/s | ETA | elapsed``, on stderr.

    On a terminal it is one line updated in place (tqdm); otherwise (a log file, CI, a pipe) a plain
    line at most every ``interval`` seconds. Either way the final state is printed once, by ``close``
    or by the update that reaches ``total``. ``total`` may be unknown (``None``).
    """

    def __init__(self, desc: str, total: int | None, unit: str = "units", interval: float = 2.0,
                 stream: TextIO | None = None, quiet: bool = False):
        self.desc, self.total, self.unit, self.interval = desc, total, unit, interval
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.done = 0
        self.items = 0
        self.item_unit = ""
        self.start = time.monotonic()
        self._last = float("-inf")  # the first update prints at once
        self._printed: int | None = None  # ``done`` when the last plain line was printed
        self._bar = None
        if not quiet and is_terminal(self.stream):
            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, dynamic_ncols=True,
                             mininterval=0.5, leave=True)

    def update(self, n: int = 1, items: int = 0, item_unit: str = "samples") -> None:
        self.done += n
        self.items += items
        if items:
            self.item_unit = item_unit
        if self._bar is not None:
            if self.items:
                self._bar.set_postfix_str(f"{self.items:,} {self.item_unit}", refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval or (self.total is not None and self.done >= self.total):
            self._last = now
            self._print()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def line(self) -> str:
        """The plain progress line for the current state."""
        el = max(self.elapsed, 1e-9)
        rate = self.done / el
        parts = [f"{self.desc}: {self.done}" + (f"/{self.total}" if self.total is not None else "") + f" {self.unit}"]
        if self.items:
            parts.append(f"{self.items} {self.item_unit} ({self.items / el:,.1f}/s)")
        else:
            parts.append(f"{rate:,.2f} {self.unit}/s")
        if self.total is not None and self.done < self.total and rate > 0:
            parts.append(f"ETA {_fmt_seconds((self.total - self.done) / rate)}")
        parts.append(f"elapsed {_fmt_seconds(el)}")
        return " | ".join(parts)

    def _print(self) -> None:
        if self.quiet or self._printed == self.done:
            return
        self._printed = self.done
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            self._print()


def print_line(text: str, stream: TextIO | None = None) -> None:
    """One line of poolsieve's own (a warning) on ``stream`` (stderr): above any progress bar drawn in place
    there, which is redrawn below it, so that the two never share a line."""
    stream = stream or sys.stderr
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None:  # only a Progress on a terminal imports it; it clears and redraws its bars
        tqdm_module.tqdm.write(text, file=stream)
    else:
        print(text, file=stream)
    stream.flush()


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def print_summary(title: str, rows: Iterable[tuple[str, Any]], stream: TextIO | None = None) -> None:
    """A short two-column summary block printed to stdout."""
    stream = stream or sys.stdout
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    print(f"== {title}", file=stream)
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}", file=stream)
    stream.flush()


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table with right-aligned numbers."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    numeric = [all(isinstance(r[i], (int, float)) for r in rows) and bool(rows) for i in range(len(header))]
    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True))
    out = [line(list(header)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)
