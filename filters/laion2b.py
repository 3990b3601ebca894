"""``laion2b``: DataComp's LAION-2B reproduction: gcld3 says English, ViT-B/32 CLIP score >= 0.28.

* ``laion2b`` is DataComp's baseline: the caption's gcld3 language (``core/language.py``: DataComp's
  settings, ``"\\n"`` read as a space) is ``language`` and ``column >= threshold``. gcld3 runs on the
  captions that pass the score test, each distinct caption once; a stored ``language`` column
  (fastText) is not used. Needs gcld3 (``pip install 'poolsieve[gcld3]'``, which builds with
  Debian's ``protobuf-compiler`` and ``libprotobuf-dev``).
* ``laion2b_fasttext`` is the same cut with fastText lid.176 for the language, as ``basic`` reads it
  (the table's ``language`` column where it has a value): no gcld3 needed, and fastText is more
  reliable than gcld3 on short captions (gcld3 calls "a photo of a dog on the beach" Irish).

Parameters: ``column: clip_b32_similarity_score``, ``threshold: 0.28``, ``language: en``; the
fastText variant also ``recompute_language: false``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pyarrow.compute as pc

from poolsieve.core.language import as_string_array, detect_gcld3_codes, gcld3_model
from poolsieve.core.uids import UidSet

from .basic import language_mask
from .columns import float_column, per_table
from .registry import ScoredPool, register


def scored_mask(table: Any, column: str, threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return float_column(table, column) >= threshold


def gcld3_mask(table: Any, candidates: np.ndarray, language: str) -> np.ndarray:
    """``candidates`` narrowed to rows whose caption gcld3 reads as ``language`` (each distinct caption once)."""
    texts = as_string_array(table["text"])
    rows = np.flatnonzero(candidates & np.asarray(texts.is_valid().to_numpy(zero_copy_only=False), dtype=bool))
    out = np.zeros(len(candidates), dtype=bool)
    if len(rows):
        encoded = pc.dictionary_encode(texts.take(rows))
        is_language = detect_gcld3_codes(encoded.dictionary) == language
        out[rows] = is_language[np.asarray(encoded.indices)]
    return out


def decide_laion2b(table: Any, column: str, threshold: float, language: str) -> np.ndarray:
    return gcld3_mask(table, scored_mask(table, column, threshold), language)


def decide_laion2b_fasttext(table: Any, column: str, threshold: float, language: str,
                            recompute_language: bool) -> np.ndarray:
    return language_mask(table, scored_mask(table, column, threshold), language, recompute_language)


@register("laion2b")
def laion2b(pool: ScoredPool, *, column: str = "clip_b32_similarity_score", threshold: float = 0.28,
            language: str = "en") -> UidSet:
    """DataComp's LAION-2B cut: gcld3 English captions whose B/32 CLIP score is at least 0.28."""
    gcld3_model()  # a missing gcld3 is reported once, here, not from every task
    decide = partial(decide_laion2b, column=column, threshold=float(threshold), language=language)
    return per_table(pool, decide, ["text", column], "laion2b")


@register("laion2b_fasttext")
def laion2b_fasttext(pool: ScoredPool, *, column: str = "clip_b32_similarity_score", threshold: float = 0.28,
                     language: str = "en", recompute_language: bool = False) -> UidSet:
    """The LAION-2B cut with fastText's language (the score table's, else computed) instead of gcld3."""
    decide = partial(decide_laion2b_fasttext, column=column, threshold=float(threshold), language=language,
                     recompute_language=bool(recompute_language))
    return per_table(pool, decide, ["text", column], "laion2b_fasttext", optional=["language"])
