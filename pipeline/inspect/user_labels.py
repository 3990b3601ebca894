"""``inspect --labels FILE``: a user's own labels of the pool's pairs, shown in the report.

The file is a parquet (``.parquet``/``.pq``) or CSV (``.csv``) table with a ``uid`` column (32 lower-case
hex characters, as in the pool's metadata) and one or more label columns of any other name; each value
is shown as text. The file comes from outside and is read as hostile: a regular file (never a FIFO,
device or folder) of at most ``MAX_BYTES``, at most ``MAX_COLUMNS`` label columns whose names clash with
no column the report already reads, every uid checked (``core/uids.py``), a sampled pair labelled once.
Any problem stops ``inspect`` in one line naming the file (and the row). The table is read in batches
and only the rows of the report's sampled pairs are kept, so memory follows the sample, not the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from poolsieve.core.errors import InputError
from poolsieve.core.uids import hex_to_keys, is_valid_uid
from poolsieve.core.untrusted_files import open_regular

MAX_BYTES = 1 << 30
MAX_COLUMNS = 16
NAME_CHARS = 64
VALUE_CHARS = 80
BATCH_ROWS = 1 << 16
PARQUET, CSV = (".parquet", ".pq"), (".csv",)


@dataclass
class UserLabels:
    """The labels of the wanted uids: ``frame`` holds ``uid`` and ``columns`` (values as text or None)."""

    file: str  # the file's name alone: the report and its summary travel without the user's paths
    columns: list[str]
    rows: int  # rows in the whole file
    frame: Any = field(repr=False)  # pandas DataFrame

    def summary(self) -> dict[str, Any]:
        return {"file": self.file, "columns": self.columns, "rows": self.rows}


def read_labels(path: str | Path, wanted: set[str], reserved: set[str] = frozenset()) -> UserLabels:
    """Check the labels file at ``path`` whole and keep the rows whose uid is in ``wanted``; a label column
    named like one of ``reserved`` (the report's own columns) is refused."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in PARQUET + CSV:
        raise InputError(path, "a labels file is a parquet (.parquet, .pq) or CSV (.csv) table with a uid column")
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BYTES:
            raise InputError(path, f"labels file is {size / 2**30:.1f} GiB, over the {MAX_BYTES >> 30} GiB "
                                   "inspect reads; keep the uid and label columns only")
        batches = _parquet_batches(f, path) if suffix in PARQUET else _csv_batches(f, path)
        columns = _columns(next(batches), path, reserved)
        kept, rows, seen = [], 0, {}
        for batch in batches:
            keep = _check_batch(batch, path, rows, wanted, seen)
            if keep is not None:
                kept.append(batch.filter(keep).select(["uid", *columns]).to_pandas())
            rows += batch.num_rows
    frame = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=["uid", *columns])
    for c in columns:
        frame[c] = [_text(v) for v in frame[c]]
    return UserLabels(path.name, columns, rows, frame)


def _columns(names: list[str], path: Path, reserved: set[str]) -> list[str]:
    """The label columns of a file whose column names are ``names``."""
    if "uid" not in names:
        raise InputError(path, f"no uid column (columns: {', '.join(n[:NAME_CHARS] for n in names[:10])})")
    columns = [n for n in names if n != "uid"]
    if not columns:
        raise InputError(path, "no label column beside uid")
    if len(columns) > MAX_COLUMNS:
        raise InputError(path, f"{len(columns)} label columns; the report shows at most {MAX_COLUMNS}")
    for name in columns:
        if not name.strip() or len(name) > NAME_CHARS:
            raise InputError(path, f"label column name {name[:NAME_CHARS]!r} must be 1 to {NAME_CHARS} characters")
        if name in reserved:
            raise InputError(path, f"label column {name!r} has the name of a column the report reads from the "
                                   "pool; rename it")
    if len(set(columns)) < len(columns):
        raise InputError(path, "two label columns have the same name")
    return columns


def _check_batch(batch: Any, path: Path, offset: int, wanted: set[str], seen: dict[str, int]) -> Any:
    """Every uid of a batch checked; a mask of the wanted rows (None when there are none)."""
    uids = batch.column("uid")
    if pa.types.is_dictionary(uids.type):
        uids = uids.dictionary_decode()
    if pa.types.is_large_string(uids.type):
        uids = uids.cast(pa.string())
    try:
        hex_to_keys(uids, path)
    except InputError:
        values = uids.to_pylist()
        i = next(i for i, u in enumerate(values) if not is_valid_uid(u))
        raise InputError(path, f"row {offset + i + 1}: uid {str(values[i])[:40]!r} is not 32 lowercase hex "
                               "characters") from None
    if not wanted:
        return None
    mask = pc.is_in(uids, value_set=pa.array(sorted(wanted), type=pa.string()))
    rows = [int(i) for i in pc.indices_nonzero(mask).to_pylist()]
    for i in rows:
        uid = uids[i].as_py()
        if uid in seen:
            raise InputError(path, f"uid {uid} is labelled twice (rows {seen[uid]} and {offset + i + 1})")
        seen[uid] = offset + i + 1
    return mask if rows else None


def _parquet_batches(f: Any, path: Path):
    """The column names, then record batches of a parquet file (errors as one line)."""
    try:
        table = pq.ParquetFile(f)
        yield list(table.schema_arrow.names)
        yield from table.iter_batches(batch_size=BATCH_ROWS)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(path, f"not a readable parquet file ({str(e).splitlines()[0][:120]})") from None


def _csv_batches(f: Any, path: Path):
    """The column names, then record batches of a CSV file, every column read as text."""
    try:
        names = pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=1 << 20)).schema.names
        f.seek(0)
        reader = pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=1 << 20),
                               convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names}))
        yield list(names)
        yield from reader
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(path, f"not a readable CSV file ({str(e).splitlines()[0][:120]})") from None


def _text(value: Any) -> str | None:
    """A label value as the report shows it: text cut to ``VALUE_CHARS``; None when missing or empty."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return (text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…") or None
