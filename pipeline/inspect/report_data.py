"""What the HTML report plots, read from a workspace without loading a whole pool.

``sample_pool`` reads score tables in a seeded random order until it holds ``max_rows`` pool members
(the ``success`` rows), so a 12.8M-row pool costs a few tables; a small pool is read whole. Each row
knows its shard and tar key (for thumbnails), its scores, its membership of every subset, and the
pool's labels where there are any: the user's own (``inspect --labels FILE``, see user_labels.py), the
built-in pool's ``synthetic/labels.parquet``, and metadata columns whose name contains ``label`` or
``defect``. The user's labels, when given, are the ones the report shows. Embeddings are never read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from poolsieve.core.errors import InputError
from poolsieve.core.formats import STATUS_SUCCESS, read_json, read_subset
from poolsieve.core.uids import UidSet, hex_to_keys
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.inspect.user_labels import UserLabels, read_labels

SEED = 0
MAX_ROWS = 50_000
ROW_COLUMNS = ("uid", "key", "text", "original_width", "original_height", "language", "caption_words",
               "caption_length", "status", "error")
MAX_LABEL_VALUES = 12  # a label's values shown apart; the rest are "(other)"


def is_score_column(name: str) -> bool:
    return name.startswith("clip_") and name.endswith("_score")


def is_label_column(name: str) -> bool:
    """A column of per-sample truth labels (``defect``, ``defects``, ``label``, ``shape_label``, ...)."""
    lowered = name.lower()
    return "defect" in lowered or "label" in lowered


def seeded_rng(*parts: str | int) -> np.random.Generator:
    """A generator fixed by ``parts`` (names hashed with crc32): the same sample on every render."""
    return np.random.default_rng([SEED, *(p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts)])


@dataclass
class PoolSample:
    """Sampled pool members: one row per member, with where it lives, its scores and its subsets."""

    frame: Any  # pandas DataFrame: ROW_COLUMNS present in the tables, score columns, "shard", label columns
    score_columns: list[str]
    label_columns: list[str]
    members: dict[str, np.ndarray] = field(default_factory=dict)  # subset -> bool per row
    tables_read: int = 0
    tables_total: int = 0
    pool_rows: int = 0  # members in the whole pool (success rows of every table)
    user_labels: UserLabels | None = None  # inspect --labels FILE: its columns lead label_columns

    @property
    def is_whole_pool(self) -> bool:
        return self.tables_read == self.tables_total

    @property
    def shown_labels(self) -> list[str]:
        """The label columns cards show: the user's own, else those named like labels or defects."""
        if self.user_labels is not None:
            return list(self.user_labels.columns)
        return [c for c in self.label_columns if is_label_column(c)] or self.label_columns[:1]


def sample_pool(ws: Workspace, subset_names: list[str], pool_rows: int, max_rows: int = MAX_ROWS,
                labels: Path | None = None) -> PoolSample:
    """Up to ``max_rows`` pool members from score tables taken in a seeded order (``pool_rows``: the
    members of the whole pool, as inspect counted them), with the user's ``labels`` file joined on uid."""
    tables = ws.score_tables()
    order = seeded_rng("tables").permutation(len(tables))
    frames, kept = [], 0
    score_columns: list[str] = []
    for i in order:
        path = tables[int(i)]
        names = pq.read_schema(path).names
        score_columns = score_columns or [c for c in names if is_score_column(c)]
        df = pq.read_table(path, columns=[c for c in (*ROW_COLUMNS, *score_columns) if c in names]).to_pandas()
        if "status" in df:
            df = df[df["status"] == STATUS_SUCCESS]
        df["shard"] = path.stem
        frames.append(df)
        kept += len(df)
        if kept >= max_rows:
            break
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["uid", "shard"])
    if len(frame) > max_rows:
        frame = frame.iloc[np.sort(seeded_rng("rows").choice(len(frame), max_rows, replace=False))]
        frame = frame.reset_index(drop=True)
    user = None
    if labels is not None:
        user = read_labels(labels, set(frame["uid"]), reserved={*frame.columns, *ROW_COLUMNS, "shard"})
        frame = frame.merge(user.frame, on="uid", how="left") if len(frame) else frame.assign(
            **{c: [] for c in user.columns})
    frame, label_columns = _with_labels(ws, frame)
    label_columns = [*(user.columns if user else []), *label_columns]
    keys = hex_to_keys(frame["uid"].to_numpy()) if len(frame) else np.zeros(0, dtype="S16")
    members = {}
    for name in subset_names:
        try:
            members[name] = UidSet.from_pairs(read_subset(ws.subset_path(name), allow_repeats=True)).isin(keys)
        except (InputError, OSError, ValueError):
            continue  # inspect reports an unreadable subset; the page just leaves it out
    return PoolSample(frame, score_columns, label_columns, members, tables_read=len(frames), tables_total=len(tables),
                      pool_rows=pool_rows, user_labels=user)


def _with_labels(ws: Workspace, frame: Any) -> tuple[Any, list[str]]:
    """``frame`` joined (on uid) with label columns from the built-in pool's side table or the metadata."""
    sources = [ws.labels_path] if ws.labels_path.is_file() else []
    sources += ws.metadata_files() if ws.metadata_dir.is_dir() else []
    found: list[str] = []
    wanted = set(frame["uid"]) if len(frame) else set()
    for source in sources:
        try:
            names = pq.read_schema(source).names
        except Exception:  # noqa: BLE001 - an unreadable side file just means no labels from it
            continue
        cols = [c for c in names if c != "uid" and c not in frame.columns and c not in found
                and (source == ws.labels_path or is_label_column(c))]
        if "uid" not in names or not cols or not wanted:
            continue
        labels = pq.read_table(source, columns=["uid", *cols]).to_pandas()
        labels = labels[labels["uid"].isin(wanted)].drop_duplicates("uid")
        if labels.empty:
            continue
        frame = frame.merge(labels, on="uid", how="left")
        found += cols
    return frame, found


CLEAN_LABELS = ("none", "clean")  # label values that mean "no defect"


def label_text(row: Any, label_columns: list[str], named: bool = False) -> str:
    """The row's labels in ``label_columns`` (``PoolSample.shown_labels``) as short text (``none``/empty
    values left out; ``named``: each as ``column: value``)."""
    parts = []
    for c in label_columns:
        value = row.get(c)
        if isinstance(value, (list, tuple, np.ndarray)):
            value = ", ".join(str(v) for v in value)
        if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) in ("", *CLEAN_LABELS):
            continue
        text = f"{c}: {value}" if named else str(value)
        if text not in parts:  # the same label from the metadata and from labels.parquet once
            parts.append(text)
    return "; ".join(parts)


def primary_label(sample: PoolSample) -> str | None:
    """The label column to colour scatter points by and to count per subset: the user's first label
    column, else a label or defect column if there is one."""
    if sample.user_labels is not None:
        return sample.user_labels.columns[0]
    labels = [c for c in sample.label_columns if is_label_column(c)]
    return labels[0] if labels else None


def label_values(sample: PoolSample, column: str, most: int = MAX_LABEL_VALUES) -> np.ndarray:
    """A label column's values as text, a missing one as ``(no label)``, all but the ``most - 1`` most
    common values as ``(other)`` (a table row or legend entry each)."""
    values = np.array(["(no label)" if v is None or (isinstance(v, float) and v != v) else str(v)
                       for v in sample.frame[column]], dtype=object)
    uniq, counts = np.unique(values.astype(str), return_counts=True)
    if len(uniq) > most:
        common = set(uniq[np.argsort(-counts, kind="stable")[:most - 1]])
        values = np.array([v if v in common else "(other)" for v in values], dtype=object)
    return values


def subset_records(ws: Workspace, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each subset's ``subsets/NAME.json`` (empty when missing or unreadable)."""
    out = {}
    for name in names:
        try:
            out[name] = read_json(ws.subset_info_path(name))
        except Exception:  # noqa: BLE001 - a subset without a record still has its members
            out[name] = {}
    return out


def score_range(values: np.ndarray, extra: list[float]) -> tuple[float, float]:
    """The histogram's range: the 0.5%..99.5% quantiles (outliers go to the end bins), widened to the
    thresholds drawn on it."""
    lo, hi = (np.quantile(values, [0.005, 0.995]) if len(values) else (0.0, 1.0))
    lo, hi = min([float(lo), *extra]), max([float(hi), *extra])
    if hi <= lo:
        hi = lo + 1e-3
    pad = (hi - lo) * 0.02
    return lo - pad, hi + pad


def bin_count(values: np.ndarray, lo: float, hi: float, least: int = 30, most: int = 100) -> int:
    """Bins over ``[lo, hi]`` by the Freedman-Diaconis rule (width 2 IQR / n^(1/3)), kept within
    ``[least, most]``: a narrow peak gets bins fine enough to show its shape."""
    if len(values) < 2:
        return least
    q1, q3 = np.quantile(values, [0.25, 0.75])
    width = 2.0 * float(q3 - q1) / len(values) ** (1 / 3)
    return int(np.clip(np.ceil((hi - lo) / width), least, most)) if width > 0 else most


def dense_window(values: np.ndarray, mass: float = 0.8) -> tuple[float, float]:
    """The shortest interval that holds ``mass`` of the values (where most of the pool lies)."""
    v = np.sort(values)
    k = max(1, int(np.ceil(mass * len(v))))
    if len(v) <= k:
        return float(v[0]), float(v[-1])
    widths = v[k - 1:] - v[:len(v) - k + 1]
    i = int(np.argmin(widths))
    return float(v[i]), float(v[i + k - 1])
