"""The pool's score tables as one lazy ``pyarrow.dataset``: what ``poolsieve sql`` and the Python API read.

Each table is checked before the dataset sees it, as any workspace file from someone else: a regular
file (a FIFO or a folder is refused without blocking), a readable parquet footer, and a ``uid`` column
of strings. The dataset's schema is the union of the tables' schemas (a score column that one table
lacks reads as null there); two tables that type one column differently are refused, naming the second.
Nothing but footers is read here: rows are read when the dataset is scanned, with the columns and row
filter the scan asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import InputError
from .untrusted_files import open_regular


def table_schema(path: Path) -> Any:
    """The arrow schema of score table ``path`` (a regular file, readable parquet, ``uid`` a string)."""
    with open_regular(path) as f:
        try:
            schema = pq.read_schema(f)
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise InputError(path, f"not a readable parquet score table ({e})") from None
    if "uid" not in schema.names:
        raise InputError(path, f"score table lacks column uid; it has {', '.join(schema.names)}")
    uid = schema.field("uid").type
    if not (pa.types.is_string(uid) or pa.types.is_large_string(uid)):
        raise InputError(path, f"column uid has type {uid}; a uid is a string of 32 lowercase hex characters")
    return schema


def score_dataset(tables: Sequence[Path]) -> Any:
    """The score tables (in the given order, the workspace's shard order) as one ``pyarrow.dataset.Dataset``."""
    if not tables:
        raise InputError(None, "no score tables to read")
    schema = None
    for path in tables:
        own = table_schema(path)
        try:
            schema = own if schema is None else pa.unify_schemas([schema, own])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InputError(path, f"its columns do not match the other score tables' ({e})") from None
    return ds.dataset([str(p) for p in tables], schema=schema, format="parquet")
