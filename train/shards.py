"""Training data for open_clip: folders (optionally weighted) -> one ``--train-data`` string of any length.

open_clip takes its shards as one string, ``::``-separated, each part a path or a brace pattern. A
plain list of thousands of paths overflows Linux's 128 KiB limit on one argument, so
``train_data_string`` writes each maximal run of consecutive shard numbers in one folder as one
brace pattern (``/d/{00000000..00009999}.tar``), as DataComp's launcher does. Expanding the result
gives back exactly the input shards in their order, so open_clip samples exactly as it would from
the plain list. Weights follow DataComp's ``--data_weights``: a folder's weight applies to each of
its shards (open_clip's ``--train-data-upsampling-factors``, one factor per ``::`` part). When even
the patterns are too long (many gaps), the runner reads the string from a file instead
(``DATA_FILE_FLAG``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from poolsieve.core.errors import ConfigError, InputError

DATA_FILE_FLAG = "--poolsieve-train-data-file"  # the runner swaps it for --train-data (+ factors)
ARG_LIMIT = 100_000  # bytes per argument we hand a process; Linux's own limit is 131,072
_NUMBERED = re.compile(r"^(.*?)(\d+)\.tar$")


@dataclass(frozen=True)
class Source:
    """One data folder (or list of tars) and its sampling weight (None: uniform over all shards)."""

    shards: tuple[Path, ...]
    weight: float | None = None


def brace_patterns(shards: Sequence[Path]) -> list[str]:
    """``shards`` as patterns: each run of consecutive numbers with one prefix and width becomes one."""
    out: list[str] = []
    run: tuple[str, int, int, int] | None = None  # prefix, width, first, last

    def flush() -> None:
        if run is not None:
            prefix, width, first, last = run
            out.append(f"{prefix}{first:0{width}d}.tar" if first == last
                       else f"{prefix}{{{first:0{width}d}..{last:0{width}d}}}.tar")

    for shard in shards:
        text = str(shard)
        if any(c in text for c in "{},") or "::" in text:
            raise InputError(shard, "shard path contains a brace, comma or '::', which open_clip reads as a pattern")
        m = _NUMBERED.match(text)
        if m is None:
            flush()
            run = None
            out.append(text)
            continue
        prefix, digits = m.group(1), m.group(2)
        number, width = int(digits), len(digits)
        if run is not None and run[0] == prefix and run[1] == width and number == run[3] + 1:
            run = (prefix, width, run[2], number)
        else:
            flush()
            run = (prefix, width, number, number)
    flush()
    return out


def train_data_string(sources: Sequence[Source]) -> tuple[str, str | None]:
    """open_clip's ``--train-data`` and ``--train-data-upsampling-factors`` (None when unweighted)."""
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        raise ConfigError("give a weight to every data folder or to none (--data a::b --data-weights 1::2)")
    parts: list[str] = []
    factors: list[str] = []
    for source in sources:
        patterns = brace_patterns(source.shards)
        parts += patterns
        if source.weight is not None:
            factors += [f"{source.weight:g}"] * len(patterns)
    return "::".join(parts), ("::".join(factors) if all(weighted) else None)


def expand(data: str) -> list[str]:
    """The shard paths a ``--train-data`` string names, in order (as open_clip expands it)."""
    return [url for part in data.split("::") for url in braceexpand.braceexpand(part)]
