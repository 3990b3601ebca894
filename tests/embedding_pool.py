"""A small scored pool with embeddings for the embedding-filter tests: 3 score tables (one failed row
each), b32 image and text embeddings, a target set, and duplicates of several kinds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from poolsieve.core.formats import write_embeddings
from poolsieve.filters.registry import ScoredPool

DIM = 16


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng, n, dim=DIM, centres=12, noise=0.6):
    c = rng.standard_normal((centres, dim))
    return unit(c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, dim))).astype(np.float16)


def build_embedding_pool(root: Path, sizes=(170, 150, 180), seed: int = 7) -> Path:
    """Write the pool under ``root`` (``scores/``, ``references/target.npz``) and return ``root``."""
    rng = np.random.default_rng(seed)
    (root / "scores").mkdir(parents=True)
    words = np.array(["dog", "cat", "red", "car", "tree", "photo", "of", "a", "beach", "night"])
    seen_uids, seen_sha = [], []
    for s, n in enumerate(sizes):
        img, txt = clustered(rng, n), clustered(rng, n)
        img[5] = img[3]  # a semantic (and exact) duplicate
        uids = [f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**62, (n, 2))]
        sha = [f"{v:064x}" for v in rng.integers(0, 2**62, n)]
        sha[5] = sha[3]
        sha[6] = None
        if seen_uids:
            uids[8] = seen_uids[0]  # a uid repeated across shards
            sha[9] = seen_sha[1]  # same bytes as a row of an earlier shard
        seen_uids += uids
        seen_sha += sha
        text = [" ".join(rng.choice(words, size=m)) for m in rng.integers(1, 6, n)]
        status = np.array(["success"] * n, dtype=object)
        status[2] = "failed_to_decode"
        df = pd.DataFrame({
            "uid": uids, "text": text, "sha256": sha, "status": status,
            "language": np.where(rng.random(n) < 0.8, "en", "fr"),
            "clip_b32_similarity_score": (img.astype(np.float32) * txt.astype(np.float32)).sum(1) * 0.3,
        })
        df.to_parquet(root / "scores" / f"{s:05d}.parquet", index=False)
        write_embeddings(root / "scores" / f"{s:05d}.npz", {"b32_img": img, "b32_txt": txt})
    (root / "references").mkdir()
    np.savez(root / "references" / "target.npz", b32_img=clustered(np.random.default_rng(1), 30))
    return root


def make_pool(root: Path, runtime=None, **kwargs) -> ScoredPool:
    tables = sorted((root / "scores").glob("*.parquet"))
    return ScoredPool(tables, **kwargs) if runtime is None else ScoredPool(tables, runtime, **kwargs)
