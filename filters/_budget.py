"""The memory budget of the embedding filters: how many bytes one process's working set may take.

``--memory-budget`` (``poolsieve filter``; ``memory_budget`` of a ``ScoredPool``) bounds what an
embedding filter holds at once in any one process (the driver, or one Ray task): query chunks, the
rows of one cluster bucket, the k-means training sample. Work larger than the budget is cut into
pieces that fit, and what must outlive a piece is spilled to a hidden folder of the workspace
(``_spill.py``). The default is a quarter of the machine's physical memory (each Ray node reads its
own), at least ``MIN_BUDGET``. Sizes are written ``2GiB``, ``512MiB``, ``1.5G`` or a number of bytes.

Besides the budget a process holds the interpreter and its libraries (about 0.4 GiB with faiss and
torch) and, in the driver, the kept uid set (16 bytes per kept row).
"""

from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np

from poolsieve.core.errors import ConfigError, PoolsieveWarning

MIN_BUDGET = 64 * 2**20
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$")


def parse_size(text: str | int | float | None) -> int | None:
    """``'2GiB'`` -> 2147483648 bytes; ``None`` stays ``None`` (the machine's default)."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise ConfigError(f"memory budget must be a size such as 2GiB, got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _SIZE.match(str(text).lower())
        if not match or match.group(2) not in _UNITS:
            raise ConfigError(f"memory budget must be a size such as 2GiB, 512MiB or 3e9, got {text!r}")
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if value < MIN_BUDGET:
        raise ConfigError(f"memory budget {text!r} is below the smallest workable one ({format_size(MIN_BUDGET)})")
    return int(value)


def format_size(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def machine_memory() -> int:
    """Physical memory of this machine (``MemTotal``), or what ``sysconf`` says."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget() -> int:
    return max(MIN_BUDGET, machine_memory() // 4)


def resolve_budget(budget: int | str | None) -> int:
    """Bytes of the budget: the one given, or this machine's default."""
    return parse_size(budget) or default_budget()


def rows_within(budget: int, bytes_per_row: float, *, share: float = 1.0, least: int = 1,
                most: int | None = None) -> int:
    """How many rows of ``bytes_per_row`` fit in ``share`` of ``budget`` (at least ``least``)."""
    rows = int(budget * share // max(bytes_per_row, 1.0))
    rows = max(least, rows)
    return min(rows, most) if most is not None else rows


def fit_sample(rows: np.ndarray, fit: int, seed: int, what: str, budget: int) -> np.ndarray:
    """``rows`` (sorted row ids of a training sample), or a seeded sorted subset of ``fit`` of them when
    more do not fit the budget (with a one-line warning naming ``what``)."""
    if len(rows) <= fit:
        return rows
    warnings.warn(f"{what} trains on {fit:,} of its {len(rows):,} sample rows to fit the memory budget "
                  f"({format_size(budget)}); raise --memory-budget to use them all", PoolsieveWarning, stacklevel=3)
    return np.sort(np.random.default_rng([seed, 2]).choice(rows, size=fit, replace=False))


def fit_count(size: int, fit: int, what: str, budget: int) -> int:
    """``size`` (rows of a training sample), or ``fit`` when more do not fit the budget (with a one-line
    warning naming ``what``): the caller then takes the first ``fit`` rows of its sample's order."""
    if size <= fit:
        return size
    warnings.warn(f"{what} trains on {fit:,} of its {size:,} sample rows to fit the memory budget "
                  f"({format_size(budget)}); raise --memory-budget to use them all", PoolsieveWarning, stacklevel=3)
    return fit


def task_cpus(pool) -> float:
    """CPUs a budget-sized task asks Ray for (see the module docstring); 1 in this process."""
    if pool.runtime.executor == "local":
        return 1.0
    nodes = pool.runtime.node_resources()
    per_cpu = min(n.get("memory", 0.0) / max(n.get("CPU", 1.0), 1.0) for n in nodes)
    if per_cpu <= 0:
        return 1.0
    need = math.ceil(2 * pool.budget / per_cpu)
    return float(max(1, min(need, int(min(n.get("CPU", 1.0) for n in nodes)))))
