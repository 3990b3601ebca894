"""Where stages run their units: Ray tasks (local Ray or a cluster) or, for debugging, in-process.

A unit is one shard or one parquet file. ``Runtime.map`` runs a function over units, shows progress
and returns results in unit order. Errors a unit raises reach the caller as the original exception
(a ``PoolsieveError`` stays a one-line user error), not as a Ray traceback.

Tasks made with ``Runtime.remote`` (``map`` uses it) are re-run, up to ``task_retries`` times, when
Ray loses the worker or the node running them (a node that dies, a worker killed for memory): Ray's
``max_retries`` counts only such system failures, and ``retry_exceptions`` stays off, so an exception
the unit raises itself is never retried. Units must therefore be idempotent (they write to a
temporary name and rename, see DESIGN.md). When the retries are used up, ``get_result`` raises a
one-line ``PoolsieveError`` naming the unit.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import PoolsieveError
from .progress import Progress

U = TypeVar("U")
R = TypeVar("R")

EXECUTORS = ("ray", "local")
TASK_RETRIES = 3  # re-runs of a task whose worker or node was lost (Ray's own default)


@dataclass
class Runtime:
    """``executor='ray'`` starts a local Ray (``address=None``) or joins ``address`` ('auto', 'ray://...')."""

    executor: str = "ray"
    address: str | None = None
    num_cpus: int | None = None
    task_retries: int = TASK_RETRIES
    _started: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise PoolsieveError(f"unknown executor {self.executor!r}; use one of {', '.join(EXECUTORS)}")
        if self.address and self.executor != "ray":
            raise PoolsieveError("--ray-address needs the ray executor")

    # ---------------------------------------------------------------- ray lifecycle
    def ensure_ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True,
                                      "configure_logging": False}
            if self.address:
                kwargs["address"] = self.address
            else:  # a Ray of our own, even when another one runs on this machine
                kwargs.update(address="local", num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False)
            try:
                ray.init(**kwargs)
            except ConnectionError as e:
                raise PoolsieveError(f"cannot reach the Ray cluster at {self.address!r}: {e}") from None
            self._started = True
        return ray

    def shutdown(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def remote(self, fn: Callable[..., Any], *, num_cpus: float = 1, num_gpus: float = 0, **options: Any) -> Any:
        """``fn`` as a Ray remote function, re-run on another worker when its worker or node is lost."""
        ray = self.ensure_ray()
        return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=self.task_retries,
                          retry_exceptions=False, **options)(_as_function(fn))

    # ---------------------------------------------------------------- mapping units
    def map(self, fn: Callable[[U], R], units: Sequence[U], desc: str, *, num_cpus: float = 1,
            num_gpus: float = 0, max_in_flight: int | None = None,
            items: Callable[[R], int] | None = None, item_unit: str = "samples") -> list[R]:
        """Run ``fn`` on every unit; return results in unit order, with progress on stderr."""
        units = list(units)
        progress = Progress(desc, total=len(units), unit="units")
        results: list[Any] = [None] * len(units)
        if not units:
            return results
        if self.executor == "local":
            for i, u in enumerate(units):
                results[i] = fn(u)
                progress.update(1, items(results[i]) if items else 0, item_unit)
            return results

        ray = self.ensure_ray()
        remote = self.remote(fn, num_cpus=num_cpus, num_gpus=num_gpus)
        limit = max_in_flight or max(1, int(ray.available_resources().get("CPU", 1) / max(num_cpus, 1e-3)) * 2)
        pending: dict[Any, int] = {}
        next_i = 0
        try:
            while next_i < len(units) or pending:
                while next_i < len(units) and len(pending) < limit:
                    pending[remote.remote(units[next_i])] = next_i
                    next_i += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    results[i] = get_result(ray, ref, _describe(units[i]))
                    progress.update(1, items(results[i]) if items else 0, item_unit)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
        return results


def _as_function(fn: Callable[[U], R]) -> Callable[[U], R]:
    """``ray.remote`` takes plain functions only: wrap a ``functools.partial`` or other callable."""
    if inspect.isfunction(fn):
        return fn

    def unit(u: U) -> R:
        return fn(u)

    unit.__name__ = unit.__qualname__ = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "unit")
    return unit


def _describe(unit: Any) -> str:
    """A unit as the user knows it: its file when it has one."""
    for attr in ("tar_path", "path", "tar"):
        if isinstance(getattr(unit, attr, None), (str, os.PathLike)):
            return str(getattr(unit, attr))
    return unit if isinstance(unit, str) else str(unit)[:200]


def get_result(ray: Any, ref: Any, what: str | None = None) -> Any:
    """``ray.get`` that re-raises a task's own exception (a PoolsieveError keeps its message), and turns a
    worker or node lost for good (its retries used up) into a one-line ``PoolsieveError`` naming ``what``."""
    from ray.exceptions import (
        LocalRayletDiedError,
        NodeDiedError,
        ObjectLostError,
        OutOfMemoryError,
        RayActorError,
        RayTaskError,
        WorkerCrashedError,
    )

    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except (WorkerCrashedError, NodeDiedError, LocalRayletDiedError, ObjectLostError, OutOfMemoryError,
            RayActorError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "").split(". ")[0]
        raise PoolsieveError(f"{what or 'a task'}: Ray lost the worker or node running it and gave up retrying "
                             f"({type(e).__name__}: {first[:200]}); check the cluster (`ray status`) and rerun") from None
