"""``laion2b``: DataComp's LAION-2B reproduction: English captions with a ViT-B/32 CLIP score >= 0.28.

DataComp detects English with gcld3 here (it does not build without protoc); poolsieve uses the
same fastText lid.176 language as ``basic`` (a ``language`` column when the table has one).
Parameters: ``column: clip_b32_similarity_score``, ``threshold: 0.28``, ``language: en``,
``recompute_language: false``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from poolsieve.core.uids import UidSet

from .basic import language_mask
from .columns import float_column, per_table
from .registry import ScoredPool, register


def decide_laion2b(table: Any, column: str, threshold: float, language: str, recompute_language: bool) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        scored = float_column(table, column) >= threshold
    return language_mask(table, scored, language, recompute_language)


@register("laion2b")
def laion2b(pool: ScoredPool, *, column: str = "clip_b32_similarity_score", threshold: float = 0.28,
            language: str = "en", recompute_language: bool = False) -> UidSet:
    """English captions whose B/32 CLIP score is at least 0.28."""
    decide = partial(decide_laion2b, column=column, threshold=float(threshold), language=language,
                     recompute_language=bool(recompute_language))
    return per_table(pool, decide, ["text", column], "laion2b", optional=["language"])
