"""``basic``: DataComp's basic filter.

Keeps a pair when its caption is English (fastText lid.176 top-1), has more than 2 words
(``len(text.split())``) and more than 5 characters (``len(text)``), and its image has
``min(original_width, original_height) >= 200`` and ``max / min <= 3``. A ``language`` column in the
score table (written by ``poolsieve score``) is used as is; without one the language is computed,
only for rows that pass the cheaper tests.

Parameters (DataComp's values are the defaults): ``language: en``, ``min_words: 3``,
``min_chars: 6``, ``min_side: 200``, ``max_aspect: 3.0``, ``recompute_language: false``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pyarrow.compute as pc

from poolsieve.core.language import as_string_array, count_chars, count_words, detect_language_codes
from poolsieve.core.uids import UidSet

from .columns import float_column, per_table
from .registry import ScoredPool, register

CAPTION_STATS = ["caption_words", "caption_length"]  # written by score; counted here for tables without them


def caption_stats(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """(words, characters) of each caption: score's stored counts, or counted from ``text`` when absent."""
    names = table.column_names
    words = (np.asarray(table["caption_words"].fill_null(0)) if "caption_words" in names
             else count_words(table["text"]))
    chars = (np.asarray(table["caption_length"].fill_null(0)) if "caption_length" in names
             else count_chars(table["text"]))
    return words, chars


def caption_mask(table: Any, min_words: int, min_chars: int) -> np.ndarray:
    words, chars = caption_stats(table)
    return (words >= min_words) & (chars >= min_chars)


def image_mask(table: Any, min_side: float, max_aspect: float) -> np.ndarray:
    width = float_column(table, "original_width").astype(np.float64)
    height = float_column(table, "original_height").astype(np.float64)
    short, long = np.minimum(width, height), np.maximum(width, height)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (short >= min_side) & (long / short <= max_aspect)


def language_mask(table: Any, candidates: np.ndarray, language: str, recompute: bool) -> np.ndarray:
    """``candidates`` narrowed to rows whose caption language is ``language``.

    The table's ``language`` column is used where it has a value; rows without one (a table scored
    with ``--no-language``, DataComp metadata) get their language computed from the caption.
    """
    def valid(arr: Any) -> np.ndarray:
        return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)

    texts = as_string_array(table["text"])
    todo = candidates & valid(texts)  # a missing caption has no language
    out = np.zeros(len(todo), dtype=bool)
    if "language" in table.column_names and not recompute:
        stored = as_string_array(table["language"])
        known = valid(stored)
        out = todo & known & np.asarray(pc.equal(stored, language).fill_null(False).to_numpy(zero_copy_only=False))
        todo &= ~known
    rows = np.flatnonzero(todo)
    if len(rows):
        # each distinct caption once (web alt-text repeats a lot: "image", product names, ...)
        encoded = pc.dictionary_encode(texts.take(rows))
        is_language = detect_language_codes(encoded.dictionary) == language
        out[rows] = is_language[np.asarray(encoded.indices)]
    return out


def decide_basic(table: Any, language: str, min_words: int, min_chars: int, min_side: float,
                 max_aspect: float, recompute_language: bool) -> np.ndarray:
    cheap = image_mask(table, min_side, max_aspect) & caption_mask(table, min_words, min_chars)
    return language_mask(table, cheap, language, recompute_language)


@register("basic_filter")
@register("basic")
def basic(pool: ScoredPool, *, language: str = "en", min_words: int = 3, min_chars: int = 6,
          min_side: float = 200, max_aspect: float = 3.0, recompute_language: bool = False) -> UidSet:
    """English captions of >2 words and >5 characters on images >= 200 px a side, aspect <= 3."""
    decide = partial(decide_basic, language=language, min_words=int(min_words), min_chars=int(min_chars),
                     min_side=float(min_side), max_aspect=float(max_aspect),
                     recompute_language=bool(recompute_language))
    return per_table(pool, decide, ["text", "original_width", "original_height"], "basic",
                     optional=["language", *CAPTION_STATS])
