"""The filter registry and the view of a scored pool that every filter reads.

A filter reads score tables (and, for embedding filters, the row-aligned npz embeddings) and returns
a ``UidSet`` (``poolsieve.core.uids``: sorted unique 16-byte keys). No image I/O, no model calls.

```python
@register("clip_score")
def clip_score(pool: ScoredPool, *, column: str = "clip_b32_similarity_score", fraction=None, threshold=None):
    ...
    return UidSet(kept_keys)  # sorted and deduplicated by UidSet
```

The pool's members are the score-table rows whose ``status`` is ``"success"`` (rows that failed to
decode are recorded in the tables but belong to no subset).

A filter that keeps less than ``FEW_KEPT`` (10%) of the pool's members is named with the numbers and the
parameter to change: the one it declares with ``register(name, keeps="PARAM: advice")`` (semdedup's
``eps``), else its parameter list (``few_kept_warning``). Evaluating a spec in memory warns;
``poolsieve filter`` refuses to write such a subset unless it is confirmed (``--allow-small``, or the
``allow_small=true`` parameter that every filter call takes: ``ALLOW_SMALL``).
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poolsieve.core.errors import ConfigError
from poolsieve.core.formats import STATUS_SUCCESS, read_embeddings, read_score_table
from poolsieve.core.runtime import Runtime
from poolsieve.core.uids import hex_to_keys

from ._budget import resolve_budget

FilterFn = Callable[..., Any]
FILTERS: dict[str, FilterFn] = {}
PARAMETERS_OF: dict[str, Callable[..., Any]] = {}  # filter name -> the function whose signature lists its parameters
NOT_PARAMETERS = ("pool", "report")
KEEPS: dict[str, str] = {}  # filter name -> "PARAM: how it changes what is kept", as the filter declares it
FEW_KEPT = 0.10  # a filter keeping less than this share of the pool's members warns (or is refused)
ALLOW_SMALL = "allow_small"  # the parameter every filter call takes: true confirms that it may keep little


def register(name: str, params: Callable[..., Any] | None = None, *,
             keeps: str | None = None) -> Callable[[FilterFn], FilterFn]:
    """Register a filter under ``name``. Its keyword parameters are those of its own signature, or of
    ``params`` when the filter passes ``**params`` through to a ``*_run`` function (written once, there).
    ``keeps`` names the parameter that controls how much the filter keeps, with a word on which way
    (``"eps: a smaller eps drops fewer rows"``); the warning for a filter that keeps little quotes it."""
    def deco(fn: FilterFn) -> FilterFn:
        if name in FILTERS and FILTERS[name] is not fn:
            raise ValueError(f"filter {name!r} registered twice")
        FILTERS[name] = fn
        PARAMETERS_OF[name] = params or fn
        if keeps:
            KEEPS[name] = keeps
        return fn

    return deco


def kept_share(kept: int, members: int) -> str:
    """``76 of 8,460 rows (0.9%, under 10%)``."""
    return f"{kept:,} of {members:,} rows ({100 * kept / members:.1f}%, under {FEW_KEPT:.0%})"


def is_few(kept: int, members: int) -> bool:
    """Whether ``kept`` of ``members`` rows is under ``FEW_KEPT`` (never for an empty pool)."""
    return members > 0 and kept < FEW_KEPT * members


def few_kept_hint(name: str, params: Mapping[str, Any]) -> str:
    """The parameter of filter ``name`` that controls how much it keeps, with its value in ``params``."""
    if name in KEEPS:
        param = KEEPS[name].split(":", 1)[0].strip()
        now = f"{params[param]!r}" if param in params else "the default"
        return f"its {KEEPS[name]} (now {now})"
    named, _ = filter_parameters(name)
    return f"check its parameters ({', '.join(p.name for p in named) or 'none'})"


def few_kept_warning(name: str, params: Mapping[str, Any], kept: int, members: int) -> str | None:
    """The warning for filter ``name`` (called with ``params``) keeping ``kept`` of ``members`` rows: the
    numbers and the parameter to change; ``None`` when it keeps at least ``FEW_KEPT`` of them."""
    if not is_few(kept, members):
        return None
    return f"filter '{name}' kept {kept_share(kept, members)}: {few_kept_hint(name, params)}"


def get_filter(name: str) -> FilterFn:
    load_builtin_filters()
    if name not in FILTERS:
        raise ConfigError(f"unknown filter {name!r}; known: {', '.join(sorted(FILTERS))}")
    return FILTERS[name]


def filter_parameters(name: str) -> tuple[list[inspect.Parameter], bool]:
    """The named parameters of filter ``name`` (read from the signature, ``pool`` and ``report`` left out)
    and whether it also takes any other keyword (``**params``)."""
    get_filter(name)
    signature = inspect.signature(PARAMETERS_OF[name])
    named = [p for p in signature.parameters.values()
             if p.name not in NOT_PARAMETERS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def check_parameters(name: str, params: Mapping[str, Any]) -> None:
    """ConfigError naming the parameters that filter ``name`` does not take (a typo never falls back to a default)."""
    named, takes_any = filter_parameters(name)
    known = [p.name for p in named]
    unknown = [k for k in params if k not in known]
    if unknown and not takes_any:
        raise ConfigError(f"filter '{name}' has no parameter {', '.join(unknown)}; it takes {', '.join(known) or 'none'}")


def describe_filters() -> str:
    """Every registered filter: its name and first docstring line, then its parameters with their defaults."""
    load_builtin_filters()
    lines = []
    for name in sorted(FILTERS):
        doc = (FILTERS[name].__doc__ or "").strip().splitlines()
        lines.append(f"{name:20s} {doc[0] if doc else ''}".rstrip())
        named, takes_any = filter_parameters(name)
        shown = [p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in named]
        if takes_any:
            shown.append("...")
        text = f"({', '.join(shown)})" if shown else "(no parameters)"
        lines.append(textwrap.fill(text, 110, initial_indent=" " * 21, subsequent_indent=" " * 22))
    return "\n".join(lines)


# The modules that define poolsieve's filters, one filter (or one family) per module. Helpers that
# are not filters (columns, spec, algebra, the kNN and k-means code) are simply not listed.
BUILTIN_FILTER_MODULES: tuple[str, ...] = (
    "no_filter", "basic", "clip_score", "text_based", "laion2b",
    "image_based", "dedup", "semdedup", "d2_pruning", "decontaminate",
)


def load_builtin_filters() -> None:
    """Import the modules of ``BUILTIN_FILTER_MODULES`` so that their ``@register`` calls run."""
    for name in BUILTIN_FILTER_MODULES:
        importlib.import_module(f"{__package__}.{name}")


@dataclass
class ScoredPool:
    """A scored pool: its score tables in shard order, and the runtime to map work over them.

    ``memory_budget`` (bytes, or a size such as ``"2GiB"``; None: a quarter of the machine's memory)
    bounds the working set of the embedding filters in any one process (``_budget.py``); what does
    not fit goes to a hidden folder under ``spill_dir`` (default: the workspace the tables are in,
    else their folder), removed when the filter ends."""
    tables: Sequence[Path]
    runtime: Runtime = field(default_factory=lambda: Runtime(executor="local"))
    memory_budget: int | str | None = None
    spill_dir: Path | None = None
    _members: int | None = field(default=None, init=False, repr=False)

    @property
    def budget(self) -> int:
        """The memory budget in bytes (see the class docstring)."""
        return resolve_budget(self.memory_budget)

    def spill_root(self) -> Path:
        """Where spill folders go: ``spill_dir``, else the workspace of ``scores/`` tables, else their folder."""
        if self.spill_dir is not None:
            return Path(self.spill_dir)
        folder = Path(self.tables[0]).parent
        return folder.parent if folder.name == "scores" else folder

    def read_columns(self, columns: Sequence[str], table: Path | None = None):
        """DataFrame of ``columns`` (plus ``uid``) over the pool's successful rows, in shard order."""
        paths = [table] if table is not None else list(self.tables)
        cols = list(dict.fromkeys(["uid", *columns]))
        frames = []
        for p in paths:
            df = read_score_table(p, columns=[*cols, "status"] if _has_status(p) else cols)
            if "status" in df.columns:
                df = df[df["status"] == STATUS_SUCCESS]
                if "status" not in columns:
                    df = df.drop(columns="status")
            frames.append(df.reset_index(drop=True))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)

    def uid_keys(self, table: Path | None = None) -> np.ndarray:
        """``S16`` uid keys of the successful rows, in row order (not sorted; ``UidSet(keys[mask])`` makes a set)."""
        df = self.read_columns([], table)
        return hex_to_keys(df["uid"].to_numpy(), source=table)

    def load_embeddings(self, keys: Sequence[str], table: Path | None = None) -> dict[str, np.ndarray]:
        """Embeddings (``{key: (rows, dim)}``) of the successful rows, aligned with ``read_columns``."""
        paths = [table] if table is not None else list(self.tables)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for p in paths:
            status = read_score_table(p, columns=["status"])["status"].to_numpy() if _has_status(p) else None
            n = len(status) if status is not None else len(read_score_table(p, columns=["uid"]))
            arrays = read_embeddings(p.with_suffix(".npz"), keys, n_rows=n)
            for k in keys:
                parts[k].append(arrays[k] if status is None else arrays[k][status == STATUS_SUCCESS])
        return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float16) for k, v in parts.items()}

    def member_count(self) -> int:
        """Rows that are members of the pool (``status`` success, every row of a table without one); read once."""
        if self._members is None:
            self._members = sum(_member_rows(p) for p in self.tables)
        return self._members

    def map(self, fn: Callable[[Path], Any], desc: str, **kwargs: Any) -> list[Any]:
        """Run ``fn(table_path)`` over every score table on the runtime (Ray tasks by default)."""
        return self.runtime.map(fn, list(self.tables), desc, **kwargs)


def _member_rows(path: Path) -> int:
    if not _has_status(path):
        return pq.ParquetFile(path).metadata.num_rows
    with pq.ParquetFile(path) as f:
        status = f.read(columns=["status"])["status"]
    return int(pc.sum(pc.equal(status, STATUS_SUCCESS)).as_py() or 0)


def _has_status(path: Path) -> bool:
    return "status" in pq.read_schema(path).names
