"""Reading the pool's embeddings for the embedding filters: which model key, which features, per table.

Embeddings are read one score table at a time (``TableEmbeddings``: the member rows of one table, by
row ranges or scattered rows, through ``_npz.NpzRows``), never the whole pool at once: a filter's work
on the pool runs table by table through ``pool.map`` (Ray tasks, each reading only its own tables'
files, or in this process one table after another).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import STATUS_SUCCESS, embedding_keys
from poolsieve.core.workspace import Workspace

from ._npz import NpzRows
from ._target_file import read_target_files, target_files
from .columns import table_columns
from .registry import ScoredPool

FEATURES = ("image", "text", "image+text")
PREFERRED_KEYS = ("l14", "b32")


def available_keys(pool: ScoredPool) -> list[str]:
    """Model keys with both ``<key>_img`` and ``<key>_txt`` in the first table's npz (read by a task, so the
    driver opens no embedding file)."""
    if not pool.tables:
        raise InputError(None, "the pool has no score tables")
    return pool.runtime.map(_keys_of, [Path(pool.tables[0])], "embedding keys")[0]


def _keys_of(table: Path) -> list[str]:
    npz = Path(table).with_suffix(".npz")
    if not npz.exists():
        raise InputError(npz, "embedding file does not exist (score the pool with embeddings first)")
    names = set(NpzRows(npz).names)
    return sorted({n[:-4] for n in names if n.endswith(("_img", "_txt"))})


def pick_embedding_key(pool: ScoredPool, embedding: str | None) -> str:
    """``embedding`` if given (checked), else ``l14`` if present, else ``b32``, else the only key."""
    keys = available_keys(pool)
    npz = Path(pool.tables[0]).with_suffix(".npz")
    if embedding is not None:
        if embedding not in keys:
            raise ConfigError(f"embedding {embedding!r} is not in {npz} (has: {', '.join(keys) or 'none'})")
        return embedding
    for key in PREFERRED_KEYS:
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise ConfigError(f"{npz} holds embeddings of several models ({', '.join(keys)}): choose one with 'embedding'")


def check_features(features: str) -> str:
    if features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
    return features


def feature_names(key: str, features: str) -> list[str]:
    img, txt = embedding_keys(key)
    return {"image": [img], "text": [txt], "image+text": [img, txt]}[check_features(features)]


def member_rows(table: Path) -> np.ndarray | None:
    """Row numbers of a table's members (``status == "success"``); None when every row is one."""
    names = table_columns(Path(table))
    if "status" not in names:
        return None
    with pq.ParquetFile(table) as f:
        status = f.read(columns=["status"])["status"].to_numpy(zero_copy_only=False)
    ok = status == STATUS_SUCCESS
    return None if ok.all() else np.flatnonzero(ok)


def _table_rows(table: Path) -> int:
    with pq.ParquetFile(table) as f:
        return f.metadata.num_rows


class TableEmbeddings:
    """The embeddings ``names`` of one score table's member rows, side by side, read by rows.

    Checked as ``core.formats.read_embeddings`` checks them: each present, 2-d, one row per table row.
    Member rows are numbered 0..len-1 in table order (the rows of ``ScoredPool.read_columns``)."""
    def __init__(self, table: Path, names: Sequence[str]):
        self.table = Path(table)
        self.names = list(names)
        npz = self.table.with_suffix(".npz")
        if not npz.exists():
            raise InputError(npz, "embedding file does not exist")
        self.npz = NpzRows(npz)
        self.members = member_rows(self.table)
        n_rows = _table_rows(self.table)
        for name in self.names:
            m = self.npz.member(name)
            if len(m.shape) != 2:
                raise InputError(npz, f"embedding {name} has shape {m.shape}, expected (rows, dim)")
            if m.shape[0] != n_rows:
                raise InputError(npz, f"embedding {name} has {m.shape[0]} rows but the score table has {n_rows}: "
                                      "misaligned")
        self.widths = [self.npz.member(n).shape[1] for n in self.names]
        self.n = n_rows if self.members is None else len(self.members)

    def __len__(self) -> int:
        return self.n

    def rows(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Member rows ``lo:hi``, fp16, the embeddings side by side."""
        hi = self.n if hi is None else min(hi, self.n)
        if self.members is None:
            parts = [self.npz.rows(name, lo, hi) for name in self.names]
        elif hi <= lo:
            parts = [np.zeros((0, w), np.float16) for w in self.widths]
        else:
            first, last = int(self.members[lo]), int(self.members[hi - 1]) + 1
            pick = self.members[lo:hi] - first
            parts = [self.npz.rows(name, first, last)[pick] for name in self.names]
        return _side_by_side(parts)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Member rows ``index`` (sorted or not), fp16, the embeddings side by side."""
        index = np.asarray(index, dtype=np.int64)
        rows = index if self.members is None else self.members[index]
        return _side_by_side([self.npz.take(name, rows) for name in self.names])


def _side_by_side(parts: list[np.ndarray]) -> np.ndarray:
    x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return np.ascontiguousarray(x, dtype=np.float16)


def features_loader(key: str, features: str) -> Callable[[Path], np.ndarray]:
    """A picklable ``table -> (rows, dim) fp16`` reader of one table's successful rows."""
    names = feature_names(key, features)

    def load(table: Path) -> np.ndarray:
        return TableEmbeddings(Path(table), names).rows()

    return load


def feature_widths(pool: ScoredPool, key: str, features: str) -> list[int]:
    """Columns of each embedding in the features (``[768, 768]`` for L/14 image+text), read by a task."""
    return feature_widths_of(pool, feature_names(key, features))


def feature_widths_of(pool: ScoredPool, names: Sequence[str]) -> list[int]:
    """Columns of each of the embeddings ``names``, read by a task."""
    return pool.runtime.map(lambda t: TableEmbeddings(Path(t), names).widths, [Path(pool.tables[0])],
                            "embedding widths")[0]


def gather_rows(pool: ScoredPool, names: Sequence[str], counts: Sequence[int], rows: np.ndarray,
                dtype=np.float16) -> np.ndarray:
    """Pool rows ``rows`` (ids in any order) of the embeddings ``names`` side by side, as ``dtype``, in the
    order of ``rows``: each table's rows read by a task, copied into one array (no second copy of the
    whole sample)."""
    rows = np.asarray(rows, dtype=np.int64)
    place = np.argsort(rows, kind="stable")
    ordered = rows[place]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cut = np.searchsorted(ordered, starts)
    units = [(Path(t), ordered[cut[i]:cut[i + 1]] - starts[i]) for i, t in enumerate(pool.tables)
             if cut[i + 1] > cut[i]]
    out: np.ndarray | None = None
    filled = 0

    def take_sample(unit: tuple[Path, np.ndarray]) -> np.ndarray:
        return TableEmbeddings(unit[0], names).take(unit[1])

    for part in pool.runtime.ordered_map(take_sample, units):
        if out is None:
            out = np.empty((len(rows), part.shape[1]), dtype=dtype)
        out[place[filled:filled + len(part)]] = part
        filled += len(part)
    return out if out is not None else np.zeros((0, 0), dtype=dtype)


def load_all(pool: ScoredPool, key: str, features: str) -> np.ndarray:
    """Every table's features stacked in shard order, in this process: for small pools and tests only
    (the filters never hold the whole pool)."""
    load = features_loader(key, features)
    parts = [load(Path(t)) for t in pool.tables]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)


def row_counts(pool: ScoredPool) -> list[int]:
    """Member rows per table, in shard order (counted by tasks, one per table)."""
    return pool.map(_member_count, "count rows")


def _member_count(table: Path) -> int:
    members = member_rows(Path(table))
    return _table_rows(Path(table)) if members is None else len(members)


def check_param_names(filter_name: str, params: dict, allowed) -> None:
    """A ConfigError naming unknown parameters (a typo must not fall back to a default)."""
    names = [p for p in inspect.signature(allowed).parameters if p != "pool"]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConfigError(f"filter {filter_name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(names)}")


def reference_file(pool: ScoredPool, name: str, missing_hint: str) -> Path:
    """A reference set (``references/<name>.npz`` of the pool's workspace) or a path to an ``.npz``."""
    path = Path(name)
    if path.suffix != ".npz":
        path = Workspace(Path(pool.tables[0]).parent.parent).reference_path(name)
    if not path.exists():
        raise InputError(path, f"reference set {name!r} not found ({missing_hint})")
    return path


def read_reference_arrays(path: Path, image_key: str | None, sha256: bool = False) -> tuple[np.ndarray | None, set[str]]:
    """(image embeddings ``[rows >= 1, dim]`` or None when ``image_key`` is None, sha256 digests when
    asked) of a reference ``.npz``; anything unreadable or misshapen is bad input naming the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if sha256 and "sha256" not in files:
                raise InputError(path, "has no sha256 digests (embed it again with this version of `score --reference`)")
            hashes = {str(h) for h in z["sha256"]} if sha256 else set()
            if image_key is None:
                return None, hashes
            if image_key not in files:
                raise InputError(path, f"has no {image_key} (keys: {', '.join(sorted(files))}); embed it with the "
                                       "pool's model")
            emb = z[image_key]
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable .npz file ({e})") from None
    if emb.ndim != 2 or len(emb) == 0:
        raise InputError(path, f"{image_key} has shape {emb.shape}, expected (rows >= 1, dim)")
    return emb, hashes


def read_target(pool: ScoredPool, target: object, image_key: str, missing_hint: str) -> np.ndarray:
    """A target set's image embeddings, as wide as the pool's ``image_key``: a reference set (a name or an
    ``.npz``, ``image_key`` read from it) or DataComp's target files (``_target_file``: a ``.pt`` file, a
    folder, a glob or a list)."""
    files = target_files(target)
    if files is None:
        if Path(str(target)).exists():
            missing_hint += f"; a file or folder of that name is given as a path: ./{target}"
        emb = read_reference_arrays(reference_file(pool, str(target), missing_hint), image_key)[0]
        where = str(target)
    else:
        emb = read_target_files(files)
        where = str(files[0]) if len(files) == 1 else f"{files[0]} ... ({len(files)} files)"
    width = pool.runtime.map(lambda t: TableEmbeddings(Path(t), [image_key]).widths[0], [Path(pool.tables[0])],
                             "embedding widths")[0]
    if emb.shape[1] != width:
        raise InputError(None, f"target {where}: {emb.shape[1]}-d image features, but the pool's {image_key} "
                               f"embeddings are {width}-d (DataComp's ImageNet-1k target is ViT-L/14: 768-d)")
    return emb
