"""DataComp's released metadata (parquet + row-aligned npz embeddings) as poolsieve score tables.

DataComp ships, per metadata file, ``{stem}.parquet`` (uid, url, text, original_width, original_height,
clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256) and ``{stem}.npz`` (b32_img,
b32_txt, l14_img, l14_txt). ``poolsieve score --import-datacomp DIR`` writes ``scores/{stem}.parquet``
and ``scores/{stem}.npz`` from them, so users who downloaded them need not recompute.

When the workspace has downloaded shards, only the uids that img2dataset fetched are kept (with their
shard key and stored size), so filters choose among images that exist; otherwise every row is kept.
Scores keep the source's precision (a float64 column stays float64), so every threshold or fraction cut
equals the one DataComp's scripts make on the same metadata.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poolsieve.core.errors import InputError
from poolsieve.core.formats import (
    SCORE_TABLE_BASE_COLUMNS,
    STATUS_SUCCESS,
    atomic_path,
    check_metadata_columns,
    parquet_files,
    score_column,
    score_table_schema,
    write_embeddings,
)
from poolsieve.core.language import count_chars, count_words, detect_languages, lid_model_record
from poolsieve.core.metadata_checks import scan_metadata
from poolsieve.core.runtime import Runtime
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace, shard_stats_path
from poolsieve.pipeline.score.write import with_language_model

DATACOMP_KEYS = ("b32", "l14")


def downloaded_index(ws: Workspace) -> Any | None:
    """uid -> (key, width, height) of successful downloads, from img2dataset's shard parquets; None if none."""
    if not ws.shards_dir.is_dir():
        return None
    frames = []
    for p in sorted(ws.shards_dir.glob("*.parquet")):
        if not shard_stats_path(p).exists():
            continue
        df = pd.read_parquet(p, columns=["uid", "key", "status", "width", "height"])
        frames.append(df[df["status"] == STATUS_SUCCESS].drop(columns="status"))
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).drop_duplicates("uid").set_index("uid")


def import_file(parquet: Path, out_dir: Path, downloaded: Any | None, language: bool,
                drop_rows: np.ndarray | None = None) -> dict[str, Any]:
    """One DataComp metadata file (+ its npz) -> one score table + npz in ``out_dir``, without ``drop_rows``."""
    npz = parquet.with_suffix(".npz")
    try:
        names = pq.read_schema(parquet).names
    except Exception as e:  # noqa: BLE001
        raise InputError(parquet, f"not a readable parquet file ({e})") from None
    check_metadata_columns(parquet, names, ("uid", "text"))
    meta = pq.read_table(parquet).to_pandas()
    uids_to_pairs(meta["uid"].to_numpy(), source=parquet)
    if not npz.exists():
        raise InputError(npz, "DataComp embeddings missing: each metadata parquet comes with an npz of the same name")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise InputError(npz, f"not a readable .npz file ({e})") from None
    for k, v in arrays.items():
        if v.ndim != 2 or len(v) != len(meta):
            raise InputError(npz, f"embedding {k} has shape {v.shape} but {parquet.name} has {len(meta)} rows: misaligned")
    keep = np.ones(len(meta), dtype=bool)
    if drop_rows is not None:
        keep[drop_rows] = False  # uids repeating an earlier row (--drop-duplicate-uids)
    if downloaded is not None:
        keep &= meta["uid"].isin(downloaded.index).to_numpy()
    meta = meta[keep].reset_index(drop=True)
    key = width = height = pd.Series([None] * len(meta), dtype=object)
    if downloaded is not None:
        found = downloaded.loc[meta["uid"]]
        key, width, height = found["key"].to_numpy(), found["width"].to_numpy(), found["height"].to_numpy()
    texts = meta["text"].tolist()
    table = pd.DataFrame({
        "uid": meta["uid"].astype(object),
        "key": pd.Series(key, dtype=object),
        "text": meta["text"].astype(object),
        "original_width": pd.array(meta.get("original_width", pd.Series([None] * len(meta))), dtype="Int32"),
        "original_height": pd.array(meta.get("original_height", pd.Series([None] * len(meta))), dtype="Int32"),
        "width": pd.array(pd.Series(width, dtype=object), dtype="Int32"),
        "height": pd.array(pd.Series(height, dtype=object), dtype="Int32"),
        "sha256": meta["sha256"].astype(object) if "sha256" in meta else None,
        "caption_length": count_chars(texts),
        "caption_words": count_words(texts),
    })
    if language:
        codes, conf = detect_languages(texts)
        table["language"], table["language_score"] = codes.astype(object), conf
    else:
        table["language"], table["language_score"] = None, np.full(len(meta), np.nan, np.float32)
    table["status"], table["error"] = STATUS_SUCCESS, None
    table["phash"] = pd.array([None] * len(table), dtype="UInt64")  # no image: no perceptual hash
    table = table[list(SCORE_TABLE_BASE_COLUMNS)]
    wide = [k for k in DATACOMP_KEYS if score_column(k) in meta and meta[score_column(k)].dtype == np.float64]
    for k in DATACOMP_KEYS:
        col = score_column(k)
        if col in meta:  # float64 stays float64: a row 1e-9 from a cut falls on the side DataComp puts it
            table[col] = meta[col].astype("float64" if k in wide else "float32").to_numpy()
    out_npz, out_parquet = out_dir / f"{parquet.stem}.npz", out_dir / f"{parquet.stem}.parquet"
    write_embeddings(out_npz, {k: v[keep] for k, v in arrays.items()})
    schema = score_table_schema((k for k in DATACOMP_KEYS if score_column(k) in table), float64_keys=wide)
    arrow = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    if language:
        arrow = with_language_model(arrow, lid_model_record())
    with atomic_path(out_parquet) as tmp:
        pq.write_table(arrow, tmp)
    return {"rows_in": int(len(keep)), "rows_out": int(keep.sum())}


def import_datacomp(ws: Workspace, source: str | Path, runtime: Runtime, overwrite: bool = False,
                    language: bool = True, drop_duplicate_uids: bool = False) -> dict[str, Any]:
    """Import every ``{stem}.parquet`` (+ ``{stem}.npz``) of ``source`` into ``ws.scores_dir``. uids are
    checked first across all files (``metadata_checks``): a repeat is refused, or dropped when asked."""
    files = parquet_files(source, "DataComp metadata")
    scan = scan_metadata(files, required=("uid", "text"))
    if not drop_duplicate_uids:
        scan.refuse_duplicates()
    drops = {p: rows for p, rows in zip(scan.files, scan.repeats, strict=True) if len(rows)}
    t0 = time.perf_counter()
    todo = [p for p in files if overwrite or not (ws.score_table_path(p.stem).exists()
                                                   and ws.embeddings_path(p.stem).exists())]
    downloaded = downloaded_index(ws)
    out_dir = ws.scores_dir

    def one(p: Path) -> dict[str, Any]:
        return import_file(p, out_dir, downloaded, language, drops.get(p))

    results = runtime.map(one, todo, "import datacomp", items=lambda r: r["rows_out"], item_unit="rows")
    summary = {
        "files": len(files), "imported now": len(todo), "already imported (skipped)": len(files) - len(todo),
        "rows read": sum(r["rows_in"] for r in results), "rows kept": sum(r["rows_out"] for r in results),
        "repeated uids dropped": scan.repeated_rows if drop_duplicate_uids else 0,
        "kept": "downloaded uids only" if downloaded is not None else "all rows (no downloaded shards)",
        "elapsed s": round(time.perf_counter() - t0, 2), "output": str(out_dir),
    }
    return summary
