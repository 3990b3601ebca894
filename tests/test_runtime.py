"""Runtime.map: results in unit order on Ray and in-process; a unit's own error reaches the caller."""

from __future__ import annotations

import pytest

from poolsieve.core.errors import InputError, PoolsieveError
from poolsieve.core.runtime import Runtime


def test_ray_map_keeps_unit_order_and_reraises_unit_errors(ray_runtime):
    def slow_square(x: int) -> int:
        import time

        time.sleep(0.05 * (5 - x))  # later units finish first
        return x * x

    assert ray_runtime.map(slow_square, range(5), "squares") == [0, 1, 4, 9, 16]

    def fails_on_three(x: int) -> int:
        if x == 3:
            raise InputError(f"shard-{x}.tar", "truncated tar")
        return x

    with pytest.raises(InputError, match="shard-3.tar: truncated tar"):
        ray_runtime.map(fails_on_three, range(5), "fails")


def test_ray_map_takes_partials(ray_runtime):
    import functools
    import operator

    assert ray_runtime.map(functools.partial(operator.mul, 3), [1, 2], "partial") == [3, 6]


def test_local_map_matches_ray(local_runtime):
    assert local_runtime.map(lambda x: x + 1, [3, 1, 2], "local") == [4, 2, 3]


def test_bad_executor_is_refused():
    with pytest.raises(PoolsieveError, match="unknown executor"):
        Runtime(executor="dask")
