"""Writing a shard's score files from its encoded chunks: a new table, or models added to a scored one.

``write_shard`` writes ``scores/{shard}.npz`` and then ``scores/{shard}.parquet`` (so a parquet means a
whole pair); ``add_to_shard`` adds the embeddings and score columns of new models to both, the rest kept
as stored. Each file is written to a temporary name and renamed into place. A table's parquet metadata
records the model that made each key (``MODELS_METADATA``) and the language-id model that made its
``language`` column (``LANGUAGE_MODEL_METADATA``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poolsieve.core.errors import InputError
from poolsieve.core.formats import (
    CAPTION_TRUNCATED,
    LANGUAGE_MODEL_METADATA,
    MODELS_METADATA,
    PHASH_COLUMN,
    SCORE_TABLE_BASE_COLUMNS,
    STATUS_DECODE_ERROR,
    STATUS_TOO_LARGE,
    atomic_path,
    embedding_keys,
    score_column,
    score_table_schema,
    write_embeddings,
)
from poolsieve.core.untrusted_files import open_regular
from poolsieve.core.workspace import Workspace


@dataclass
class Assembled:
    """A shard's encoded chunks put together: table columns, and per model key its embeddings and scores."""

    columns: dict[str, list[Any]]
    rows: int
    arrays: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    encode_seconds: float
    language_model: dict[str, str] | None = None


def assemble(chunks: Sequence[Any], dims: dict[str, int]) -> Assembled:
    """Chunks (``EncodedChunk``, in row order) as whole columns; rows the encoder never saw stay zero / NaN."""
    columns: dict[str, list[Any]] = {}
    for c in chunks:
        for name, values in c.columns.items():
            columns.setdefault(name, []).extend(values)
    n = len(columns.get("uid", []))
    ok = np.concatenate([c.ok for c in chunks]) if chunks else np.zeros(0, bool)
    ok_rows = np.flatnonzero(ok)
    arrays: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for key, dim in dims.items():
        img_key, txt_key = embedding_keys(key)
        img = np.zeros((n, dim), np.float16)
        txt = np.zeros((n, dim), np.float16)
        sc = np.full(n, np.nan, np.float32)
        if chunks:
            img[ok_rows] = np.concatenate([c.image[key] for c in chunks])
            txt[ok_rows] = np.concatenate([c.text[key] for c in chunks])
            sc[ok_rows] = np.concatenate([c.scores[key] for c in chunks])
        arrays[img_key], arrays[txt_key], scores[key] = img, txt, sc
    language_model = next((c.language_model for c in chunks if getattr(c, "language_model", None)), None)
    return Assembled(columns, n, arrays, scores, float(sum(getattr(c, "seconds", 0.0) for c in chunks)),
                     language_model)


def write_shard(ws: Workspace, shard: str, chunks: Sequence[Any], dims: dict[str, int],
                records: dict[str, str] | None = None) -> dict[str, Any]:
    """Assemble a shard's encoded chunks into ``scores/{shard}.npz`` then ``scores/{shard}.parquet``, whose
    metadata records the model of each key (``records``)."""
    got = assemble(chunks, dims)
    df = pd.DataFrame({name: got.columns.get(name, []) for name in SCORE_TABLE_BASE_COLUMNS})
    for name in ("original_width", "original_height", "width", "height"):
        df[name] = pd.array(df[name], dtype="Int32")
    for name in ("caption_length", "caption_words"):
        df[name] = df[name].astype("int64")
    df["language_score"] = df["language_score"].astype("float32")
    # from the list itself: a column of ints and None would pass through float64, which keeps 53 of the 64 bits
    df[PHASH_COLUMN] = pd.array(got.columns.get(PHASH_COLUMN, [None] * got.rows), dtype="UInt64")
    for name in ("uid", "key", "text", "sha256", "language", "status", "error"):
        df[name] = df[name].astype(object)
    for key, sc in got.scores.items():
        df[score_column(key)] = sc
    write_embeddings(ws.embeddings_path(shard), got.arrays)
    with atomic_path(ws.score_table_path(shard)) as tmp:
        table = pa.Table.from_pandas(df, schema=score_table_schema(dims), preserve_index=False)
        pq.write_table(with_records(table, records or {}, got.language_model), tmp)
    return {"rows": got.rows, "decode_errors": int((df["status"] == STATUS_DECODE_ERROR).sum()),
            "too_large": int((df["status"] == STATUS_TOO_LARGE).sum()),
            "captions_cut": int(df["error"].str.contains(CAPTION_TRUNCATED, regex=False, na=False).sum()),
            "encode_seconds": got.encode_seconds}


def add_to_shard(ws: Workspace, shard: str, chunks: Sequence[Any], dims: dict[str, int],
                 records: dict[str, str] | None = None) -> dict[str, Any]:
    """Add the models in ``dims`` to a scored shard: their embeddings to ``scores/{shard}.npz`` (the others
    kept as stored), then their score columns after the table's own (its columns kept as stored; a table
    scored before the perceptual hash gains its ``phash`` column). Each
    file is written to a temporary name and renamed into place."""
    got = assemble(chunks, dims)
    table_path, npz_path = ws.score_table_path(shard), ws.embeddings_path(shard)
    with open_regular(table_path) as f:
        table = pq.read_table(f)
    order = _table_order(table, got, table_path, shard)
    with open_regular(npz_path) as f, np.load(f, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update({k: v[order] for k, v in got.arrays.items()})
    for key, sc in got.scores.items():
        sc = sc[order]
        name = score_column(key)
        if name in table.column_names:  # a column without its embeddings: replaced with the new one
            table = table.drop_columns([name])
        table = table.append_column(pa.field(name, pa.float32()), pa.array(sc, pa.float32()))
    if PHASH_COLUMN not in table.column_names and PHASH_COLUMN in got.columns:  # a table scored before the hash
        hashes = got.columns[PHASH_COLUMN]
        table = table.append_column(pa.field(PHASH_COLUMN, pa.uint64()),
                                    pa.array([hashes[i] for i in order], pa.uint64()))
    write_embeddings(npz_path, arrays)
    with atomic_path(table_path) as tmp:
        pq.write_table(with_records(table, records or {}), tmp)
    return {"rows": got.rows, "decode_errors": 0, "encode_seconds": got.encode_seconds, "added": list(dims)}


def _table_order(table: Any, got: Assembled, table_path: Any, shard: str) -> np.ndarray:
    """Which new row each row of a stored table is: the rows in order (key order), or, for a table written
    in the tar's own order (before rows were sorted by key), the same samples in that order."""
    uids = table.column("uid").to_pylist()
    keys = table.column("key").to_pylist() if "key" in table.column_names else [None] * len(uids)
    stored = list(zip(keys, uids, strict=True))
    new = list(zip(got.columns.get("key", []), got.columns.get("uid", []), strict=True))
    if stored == new:
        return np.arange(len(new))
    where = {row: i for i, row in enumerate(new)}
    if len(where) != len(new) or len(set(stored)) != len(stored) or set(stored) != set(where):
        raise InputError(table_path, f"its {len(stored)} rows are not the {got.rows} samples of "
                                     f"shards/{shard}.tar; rerun with --overwrite to score it anew")
    return np.array([where[row] for row in stored], dtype=np.int64)


def with_records(table: Any, records: dict[str, str], language_model: dict[str, str] | None = None) -> Any:
    """``table`` with ``records`` merged into the models its metadata records, and the language-id model
    that made its ``language`` column (when it was made now; else what the table records is kept)."""
    meta = dict(table.schema.metadata or {})
    try:
        before = json.loads(meta.get(MODELS_METADATA, b"{}"))
    except ValueError:
        before = {}
    merged = {**(before if isinstance(before, dict) else {}), **records}
    meta[MODELS_METADATA] = json.dumps(merged, sort_keys=True).encode()
    return with_language_model(table.replace_schema_metadata(meta), language_model)


def with_language_model(table: Any, language_model: dict[str, str] | None) -> Any:
    """``table`` whose metadata records ``language_model`` (``{"file", "sha256"}``); as it is for None."""
    if language_model is None:
        return table
    meta = dict(table.schema.metadata or {})
    meta[LANGUAGE_MODEL_METADATA] = json.dumps(language_model, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)
