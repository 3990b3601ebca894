"""Reading score-table columns for table-only filters, one shard at a time.

Filters that decide row by row run ``per_table`` over the pool's tables (Ray tasks by default):
each task reads only the columns it needs with pyarrow, keeps the pool's members (``status ==
"success"``; a table without ``status``, such as DataComp's metadata parquet, is all members) and
returns the selected uids as a ``UidSet``. Nothing is converted to pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poolsieve.core.errors import InputError
from poolsieve.core.formats import STATUS_SUCCESS
from poolsieve.core.uids import UidSet, hex_to_keys


def table_columns(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable parquet score table ({e})") from None


def read_members(path: Path, columns: Sequence[str], optional: Sequence[str] = (), need: str = "",
                 uid: bool = True) -> Any:
    """pyarrow Table of ``uid`` (unless ``uid=False``) + ``columns`` (+ those of ``optional`` present)
    over the member rows."""
    names = table_columns(path)
    want = list(dict.fromkeys(["uid", *columns] if uid else columns))
    missing = [c for c in want if c not in names]
    if missing:
        why = f" ({need} needs them)" if need else ""
        raise InputError(path, f"score table lacks column(s) {', '.join(missing)}{why}; it has {', '.join(names)}")
    want += [c for c in optional if c in names and c not in want]
    has_status = "status" in names
    # ParquetFile.read: a third of read_table's time per file, and no pyarrow.dataset (which imports pandas)
    with pq.ParquetFile(path) as f:
        table = f.read(columns=[*want, "status"] if has_status and "status" not in want else want)
    if has_status:
        table = table.filter(pc.equal(table["status"], STATUS_SUCCESS))
        if "status" not in want:
            table = table.drop_columns(["status"])
    return table


def member_keys(table: Any, path: Path) -> np.ndarray:
    """``S16`` keys of a members table, in row order."""
    return hex_to_keys(table["uid"], source=path)


def float_column(table: Any, name: str) -> np.ndarray:
    """A numeric column as a numpy array, nulls as NaN, keeping float32/float64 as stored."""
    col = table[name]
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise InputError(None, f"column {name} has type {col.type}, expected numbers")
    out = col.to_numpy() if col.null_count == 0 else col.cast(pa.float64()).fill_null(float("nan")).to_numpy()
    return out if out.dtype.kind == "f" else out.astype(np.float64)


def select_rows(path: Path, columns: Sequence[str], decide: Callable[[Any], np.ndarray],
                optional: Sequence[str] = (), need: str = "") -> UidSet:
    """Read a table's members, ``decide(table) -> bool mask``, return the kept uids."""
    table = read_members(path, columns, optional, need)
    mask = np.asarray(decide(table), dtype=bool)
    return UidSet(member_keys(table, path)[mask])


def as_task(fn: Callable[..., Any], **kwargs: Any) -> Callable[[Path], Any]:
    """``fn(path, **kwargs)`` as a plain function of the table path (``ray.remote`` refuses partials)."""

    def task(path: Path) -> Any:
        return fn(path, **kwargs)

    task.__name__ = task.__qualname__ = getattr(fn, "__name__", "task")
    return task


def per_table(pool: Any, decide: Callable[[Any], np.ndarray], columns: Sequence[str], desc: str,
              optional: Sequence[str] = ()) -> UidSet:
    """Run a row decision over every table of ``pool`` and return the union of kept uids.

    ``decide`` must be picklable (a module-level function or a ``functools.partial`` of one): it runs
    in Ray workers.
    """
    parts = pool.map(as_task(select_rows, columns=list(columns), decide=decide, optional=list(optional), need=desc),
                     desc, items=len, item_unit="uids kept")
    return UidSet.union_of(parts)
