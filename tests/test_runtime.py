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


# ------------------------------------------------------------------- streaming primitives
def _slow_square(x: int) -> int:
    import time

    time.sleep(0.03 * (6 - x % 6))  # later units finish first on Ray
    return x * x


def _count_to(n: int):
    for i in range(n):
        yield (n, i)


def _fails_on_three(x: int) -> int:
    if x == 3:
        raise InputError(f"shard-{x}.tar", "truncated tar")
    return x


class _Adder:
    """A worker holding state: its offset, set once."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def describe(self) -> int:
        return self.offset

    def add(self, x: int) -> int:
        return x + self.offset


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def runtime(request) -> Runtime:
    if request.param == "ray":  # Ray's workers cannot import this test module: its helpers travel by value
        import sys

        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return request.getfixturevalue(f"{request.param}_runtime")


def test_ordered_map_yields_in_unit_order_with_bounded_work(runtime):
    assert list(runtime.ordered_map(_slow_square, range(8), max_in_flight=3)) == [x * x for x in range(8)]
    with pytest.raises(InputError, match="shard-3.tar: truncated tar"):
        list(runtime.ordered_map(_fails_on_three, range(6), max_in_flight=2))


def test_ordered_map_hands_over_early_results_before_late_units_run(runtime):
    drawn: list[int] = []

    def units():
        for i in range(6):
            drawn.append(i)
            yield i

    results = runtime.ordered_map(_slow_square, units(), max_in_flight=2)
    assert next(results) == 0
    assert len(drawn) <= 3  # at most max_in_flight units were started (plus the one just handed over)
    assert list(results) == [1, 4, 9, 16, 25]


def test_stream_gives_every_result_once_and_draws_units_lazily(runtime):
    got = dict(runtime.stream(_slow_square, range(8), max_in_flight=3))
    assert got == {x: x * x for x in range(8)}

    fed: list[int] = []

    def feed():  # a generator fed by earlier results, as reshard's writes are fed by its scans
        for i in range(4):
            fed.append(i)
            yield i

    out = []
    for unit, result in runtime.stream(_slow_square, feed(), max_in_flight=1):
        assert fed[-1] == unit  # one in flight: the next unit is drawn only after this one completed
        out.append(result)
    assert sorted(out) == [0, 1, 4, 9]
    with pytest.raises(InputError, match="shard-3.tar"):
        list(runtime.stream(_fails_on_three, range(6), max_in_flight=2))


def test_stream_generators_hand_over_items_then_end(runtime):
    from poolsieve.core.runtime import END

    seen: dict[int, list] = {}
    ended = []
    for unit, item in runtime.stream_generators(_count_to, [3, 0, 2], max_in_flight=2):
        if item is END:
            ended.append(unit)
            continue
        if runtime.executor == "ray":
            import ray

            item = ray.get(item)
        assert unit not in ended
        seen.setdefault(unit, []).append(item)
    assert sorted(ended) == [0, 2, 3]
    assert seen == {3: [(3, 0), (3, 1), (3, 2)], 2: [(2, 0), (2, 1)]}  # each generator's items in order


def test_actor_pool_runs_items_on_set_up_workers(runtime):
    with runtime.actor_pool(_Adder, 2, 100, num_cpus=0.5) as pool:
        assert set(pool.call_all("describe")) == {100}
        got = dict(pool.stream("add", [(f"k{i}", i) for i in range(10)], per_worker=2))
    assert got == {f"k{i}": i + 100 for i in range(10)}


def test_actor_pool_takes_items_made_by_generator_tasks(runtime):
    """Items handed over by ``stream_generators`` (object references on Ray) go to the workers as they are."""
    from poolsieve.core.runtime import END

    def items():
        for unit, item in runtime.stream_generators(_count_to, [2, 3], max_in_flight=2):
            if item is not END:
                yield unit, item

    with runtime.actor_pool(_Echo, 1) as pool:
        got = sorted(result for _, result in pool.stream("echo", items()))
    assert got == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]


class _Echo:
    def echo(self, x):
        return x
