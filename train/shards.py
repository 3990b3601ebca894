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

``list_shards``, ``data_sources`` and ``count_samples`` read the input: a folder's whole shards (a
reshard not finished is refused), folders joined by ``::`` with their weights, and the samples they hold.
"""

from __future__ import annotations

import math
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import read_json
from poolsieve.core.workspace import is_whole_shard, shard_stats_path

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


def list_shards(data: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shards of a webdataset folder (``*.tar``) or an explicit list of tar files."""
    if isinstance(data, (str, Path)):
        folder = Path(data)
        if not folder.is_dir():
            if folder.suffix == ".tar" and folder.is_file():
                return [folder]
            raise InputError(folder, "training data folder does not exist (run `poolsieve reshard` first)")
        shards = sorted(p for p in folder.glob("*.tar") if not p.name.startswith("."))
        if not shards:
            raise InputError(folder, "no .tar shards in the training data folder")
        no_stats = [p for p in shards if not is_whole_shard(p)]
        if 0 < len(no_stats) < len(shards):
            raise InputError(no_stats[0], "shard has no _stats.json while others do: the reshard is not finished "
                                          "(rerun `poolsieve reshard`)")
        return shards
    shards = [Path(p) for p in data]
    if not shards:
        raise InputError(None, "no training shards given")
    for p in shards:
        if not p.is_file():
            raise InputError(p, "training shard does not exist")
    return shards


def data_sources(data: str | Path | Sequence[str | Path], weights: str | None = None) -> list[Source]:
    """``data`` as sources: a folder, a tar list, or folders joined by ``::`` (DataComp's ``--data_dir``),
    each with its weight from ``weights`` (``1::2``)."""
    parts: list[Any] = str(data).split("::") if isinstance(data, (str, Path)) else [data]
    if weights is None:
        return [Source(tuple(list_shards(p))) for p in parts]
    values = str(weights).split("::")
    if len(values) != len(parts):
        raise ConfigError(f"{len(values)} data weight(s) ({weights}) for {len(parts)} data folder(s)")
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"data weights must be numbers joined by '::', got {weights!r}") from None
    if any(not math.isfinite(w) or w <= 0 for w in numbers):
        raise ConfigError(f"data weights must be positive, got {weights!r}")
    return [Source(tuple(list_shards(p)), w) for p, w in zip(parts, numbers, strict=True)]


def count_samples(shards: Sequence[Path]) -> int:
    """Samples in the shards: from each ``{shard}_stats.json`` when present, else by reading the tar."""
    total = 0
    for shard in shards:
        stats = shard_stats_path(shard)
        if stats.exists():
            data = read_json(stats)
            for key in ("successes", "num_samples", "count"):
                if isinstance(data, dict) and isinstance(data.get(key), int):
                    total += data[key]
                    break
            else:
                raise InputError(stats, "stats file has no sample count ('successes')")
            continue
        try:
            with tarfile.open(shard) as tar:
                keys = {m.name.rsplit(".", 1)[0] for m in tar if m.isfile() and m.name.endswith(".txt")}
        except (tarfile.TarError, OSError) as e:
            raise InputError(shard, f"not a readable tar file ({e})") from None
        total += len(keys)
    return total
