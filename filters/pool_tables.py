"""The score tables a filter run reads, and the pool's fingerprint over them (recorded with each subset).

The tables are the workspace's ``scores/*.parquet``, or any folder (or one file) of tables given with
``--tables``, DataComp's metadata parquets among them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from poolsieve.core.formats import parquet_files
from poolsieve.core.workspace import Workspace


def score_table_files(ws: Workspace, tables: str | None) -> list[Path]:
    if tables is None:
        return ws.score_tables()
    folder = Path(tables).expanduser()
    if folder.is_file() and folder.suffix == ".parquet":
        return [folder]
    return parquet_files(folder, "score table")


def pool_fingerprint(tables: list[Path]) -> str:
    """sha256 over each table's name, size and parquet footer (row counts, column statistics)."""
    digest = hashlib.sha256()
    for path in tables:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - 65536))
            footer = f.read()
        digest.update(f"{path.name}\0{size}\0".encode())
        digest.update(hashlib.sha256(footer).digest())
    return digest.hexdigest()
