"""``no_filter``: every member of the pool (rows whose ``status`` is ``success``), as DataComp's no_filter."""

from __future__ import annotations

from typing import Any

import numpy as np

from .columns import per_table
from .registry import ScoredPool, register


def keep_all(table: Any) -> np.ndarray:
    return np.ones(table.num_rows, dtype=bool)


def pool_keys(pool: ScoredPool) -> np.ndarray:
    """Sorted unique ``S16`` keys of every member of the pool."""
    return per_table(pool, keep_all, [], "no_filter")


@register("no_filter")
def no_filter(pool: ScoredPool) -> np.ndarray:
    """The whole pool."""
    from .uidset import to_subset

    return to_subset(pool_keys(pool))
