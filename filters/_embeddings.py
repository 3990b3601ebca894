"""Reading the pool's embeddings for the embedding filters: which model key, which features, per table."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import embedding_keys
from poolsieve.core.workspace import Workspace

from .registry import ScoredPool

FEATURES = ("image", "text", "image+text")
PREFERRED_KEYS = ("l14", "b32")


def available_keys(pool: ScoredPool) -> list[str]:
    """Model keys with both ``<key>_img`` and ``<key>_txt`` in the first table's npz."""
    if not pool.tables:
        raise InputError(None, "the pool has no score tables")
    npz = Path(pool.tables[0]).with_suffix(".npz")
    if not npz.exists():
        raise InputError(npz, "embedding file does not exist (score the pool with embeddings first)")
    with np.load(npz, allow_pickle=False) as z:
        names = set(z.files)
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


def features_loader(key: str, features: str) -> Callable[[Path], np.ndarray]:
    """A picklable ``table -> (rows, dim) fp16`` reader of one table's successful rows."""
    names = feature_names(key, features)

    def load(table: Path) -> np.ndarray:
        arrays = ScoredPool([Path(table)]).load_embeddings(names)
        x = arrays[names[0]] if len(names) == 1 else np.concatenate([arrays[n] for n in names], axis=1)
        return np.ascontiguousarray(x, dtype=np.float16)

    return load


def feature_widths(pool: ScoredPool, key: str, features: str) -> list[int]:
    """Columns of each embedding in the features (``[768, 768]`` for L/14 image+text)."""
    arrays = pool.load_embeddings(feature_names(key, features), table=Path(pool.tables[0]))
    return [a.shape[1] for a in arrays.values()]


def load_all(pool: ScoredPool, key: str, features: str) -> np.ndarray:
    """Every table's features stacked in shard order (one process)."""
    load = features_loader(key, features)
    parts = [load(Path(t)) for t in pool.tables]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)


def row_counts(pool: ScoredPool) -> list[int]:
    """Successful rows per table, in shard order."""
    return [len(pool.read_columns([], table=Path(t))) for t in pool.tables]


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
