"""``no_filter``: every member of the pool (rows whose ``status`` is ``success``), as DataComp's no_filter."""

from __future__ import annotations

from typing import Any

import numpy as np

from poolsieve.core.uids import UidSet

from .columns import per_table
from .registry import ScoredPool, register


def keep_all(table: Any) -> np.ndarray:
    return np.ones(table.num_rows, dtype=bool)


@register("no_filter")
def no_filter(pool: ScoredPool) -> UidSet:
    """The whole pool."""
    return per_table(pool, keep_all, [], "no_filter")
