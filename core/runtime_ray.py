"""Ray's side of the runtime (``runtime.py``): what its primitives do with object references.

``get_result`` re-raises a task's own exception and turns a worker or node lost for good into one
line; ``as_completed`` keeps a bounded number of tasks running and yields them as they finish;
``cancel`` stops what a stream started when it ends early; ``some_node_fits`` tells whether any alive
node could still run the work; ``as_function`` and ``describe`` make a unit runnable and nameable.
Nothing here starts Ray: every function takes the ``ray`` module the runtime started.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .errors import PoolsieveError

U = TypeVar("U")
R = TypeVar("R")

CANCEL_WAIT_SECONDS = 60.0  # how long a stream that ends early waits for the tasks it cancelled to stop
NOTHING = object()


def top_up(source: Iterator[Any], active: dict[Any, Any], limit: int, submit: Callable[[Any], Any]) -> bool:
    """Submit units from ``source`` until ``limit`` are active (``ref -> unit``); False once it is exhausted."""
    while len(active) < limit:
        u = next(source, NOTHING)
        if u is NOTHING:
            return False
        active[submit(u)] = u
    return True


def as_completed(ray: Any, units: Iterable[Any], submit: Callable[[Any], Any], limit: int, *, force_cancel: bool,
                 wait: Callable[[Any, list[Any]], Any], on_done: Callable[[Any], None] | None = None
                 ) -> Iterator[tuple[Any, Any]]:
    """Submit units while fewer than ``limit`` run; yield ``(unit, result)`` as they complete (``wait(ray, refs)``
    returns the first ready one)."""
    source = iter(units)
    pending: dict[Any, Any] = {}
    exhausted = False
    try:
        while True:
            exhausted = exhausted or not top_up(source, pending, limit, submit)
            if not pending:
                return
            ready = wait(ray, list(pending))
            u = pending.pop(ready)
            if on_done is not None:
                on_done(ready)
            yield u, get_result(ray, ready, describe(u))
    finally:
        cancel(ray, list(pending), force=force_cancel)


def cancel(ray: Any, refs: list[Any], *, force: bool, wait: bool = True) -> None:
    """Cancel what a stream started; wait (a while) for the tasks to stop before their files are cleaned up.
    Nothing to do once this process has left Ray (its tasks end with it): a stream closed late, by the
    garbage collector after ``Runtime.shutdown``, must not call Ray (that would start or join a Ray again)."""
    if not refs or not ray.is_initialized():
        return
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=force)
    if wait and refs:
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_SECONDS)


def some_node_fits(ray: Any, need: dict[str, float]) -> bool:
    """Whether an alive node of the cluster has ``need`` in all (busy or not)."""
    try:
        nodes = ray.nodes()
    except Exception:  # noqa: BLE001 - the state API unavailable: do not end the stage on that
        return True
    return any(node.get("Alive") and all(node.get("Resources", {}).get(k, 0) >= v for k, v in need.items() if v)
               for node in nodes)


def as_function(fn: Callable[[U], R]) -> Callable[[U], R]:
    """``ray.remote`` takes plain functions only: wrap a ``functools.partial`` or other callable."""
    if inspect.isfunction(fn):
        return fn
    if inspect.isgeneratorfunction(fn):
        def unit(u: U) -> Any:
            yield from fn(u)
    else:
        def unit(u: U) -> R:
            return fn(u)

    unit.__name__ = unit.__qualname__ = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "unit")
    return unit


def describe(unit: Any) -> str:
    """A unit as the user knows it: its file when it has one (or an element of it has, for a tuple)."""
    return file_of(unit) or (unit if isinstance(unit, str) else str(unit)[:200])


def file_of(unit: Any) -> str | None:
    if isinstance(unit, os.PathLike):
        return os.fspath(unit)
    if isinstance(unit, tuple):
        return next((f for f in map(file_of, unit) if f is not None), None)
    for attr in ("tar_path", "path", "tar"):
        if isinstance(getattr(unit, attr, None), (str, os.PathLike)):
            return str(getattr(unit, attr))
    return None


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
