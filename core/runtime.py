"""Where stages run their units: Ray tasks (local Ray or a cluster) or, for debugging, in-process.

A unit is one shard or one parquet file. Every stage's Ray use goes through these primitives; each has
an in-process twin (``executor="local"``) with the same results, run one unit at a time:

* ``map``: results in unit order, with progress;
* ``ordered_map``: lazily, in unit order, at most ``max_in_flight`` units running or waiting to be
  handed over (so a consumer can start on unit 0 while later units still run);
* ``stream``: ``(unit, result)`` as units complete, at most ``max_in_flight`` running; units are drawn
  from the iterable only when a slot is free, so it may be a generator fed by earlier results;
* ``stream_generators``: each unit's generator runs as a task that hands its items over one by one
  (Ray's streaming generators, with backpressure); yields ``(unit, item)`` and ``(unit, END)``;
  on Ray an item is an object reference that tasks and actors take as it is, locally the item itself;
* ``actor_pool``: a few long-lived workers holding state (models on a GPU, a share of a filter's rows);
  ``ActorPool.stream`` sends each item to the least busy one, ``call_each`` one call to each worker.

Errors a unit raises reach the caller as the original exception (a ``PoolsieveError`` stays a one-line
user error), not as a Ray traceback. A stream that ends early (an error, the consumer stops) cancels
what it started and waits for those tasks to stop, so the caller can remove their files.

Tasks made with ``Runtime.remote`` (every primitive uses it) are re-run, up to ``task_retries`` times, when
Ray loses the worker or the node running them (a node that dies, a worker killed for memory): Ray's
``max_retries`` counts only such system failures, and ``retry_exceptions`` stays off, so an exception
the unit raises itself is never retried. Units must therefore be idempotent (each writes to a
temporary name and renames it into place when whole: ``core/formats.py``'s ``atomic_path``). An actor lost with its node is restarted as often, with
the arguments it was made with, and the calls it had in hand are re-sent. When the retries are used up,
``get_result`` raises a one-line ``PoolsieveError`` naming the unit. When no node left in the cluster
could ever run the work (its only nodes with CPUs or GPUs died), the wait ends after ``node_wait_seconds``
(time for an autoscaler to add nodes) with a one-line ``PoolsieveError``; finished units are kept, so the
rerun on a repaired cluster resumes.

What the primitives do with Ray's object references (results, completion order, cancelling, the check
that a node can still run the work) is in ``runtime_ray.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import PoolsieveError
from .progress import Progress, is_terminal
from .runtime_ray import as_completed, as_function, cancel, describe, get_result, some_node_fits, top_up
from .stage_log import route_ray_output

U = TypeVar("U")
R = TypeVar("R")

EXECUTORS = ("ray", "local")
TASK_RETRIES = 3  # re-runs of a task whose worker or node was lost (Ray's own default)
NODE_WAIT_SECONDS = 600.0  # how long work no alive node can run waits for nodes (an autoscaler adding some) before the stage ends
POLL_SECONDS = 5.0  # how often a wait checks that some alive node can still run the work
END = object()  # ``stream_generators``: this unit's generator has no more items


@dataclass
class Runtime:
    """``executor='ray'`` starts a local Ray (``address=None``) or joins ``address`` ('auto', 'ray://...')."""

    executor: str = "ray"
    address: str | None = None
    num_cpus: int | None = None
    task_retries: int = TASK_RETRIES
    node_wait_seconds: float = NODE_WAIT_SECONDS
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
            if not is_terminal(sys.stdout):  # workers' lines that Ray prints itself: no colour codes
                os.environ.setdefault("RAY_COLOR_PREFIX", "0")
            # Ray's own records (its token-authentication banner, ...) go through the root logger, hence
            # to the command's log (core/stage_log.py); with configure_logging=False Ray drops its
            # handler and, its logger not propagating, they would reach stderr as they are. Workers'
            # output reaches this process (log_to_driver) and goes to the same log (route_ray_output).
            logging.getLogger("ray").propagate = True
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
            route_ray_output()
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
                          retry_exceptions=False, **options)(as_function(fn))

    def resources(self) -> dict[str, float]:
        """What units can use: the Ray cluster's resources, or this process's CPUs and GPUs."""
        if self.executor == "ray":
            return dict(self.ensure_ray().cluster_resources())
        out: dict[str, float] = {"CPU": float(_process_cpus())}
        with contextlib.suppress(ImportError):
            import torch

            out["GPU"] = float(torch.cuda.device_count())
        return out

    def cpus(self) -> int:
        """CPUs units can use: the Ray cluster's, or this process's."""
        if self.executor == "ray":
            return max(1, int(self.ensure_ray().cluster_resources().get("CPU", 1)))
        return _process_cpus()

    def _limit(self, ray: Any, num_cpus: float) -> int:
        """Default in-flight bound: twice the tasks the free CPUs can run at once."""
        return max(1, int(ray.available_resources().get("CPU", 1) / max(num_cpus, 1e-3)) * 2)

    def _wait_any(self, ray: Any, refs: list[Any], need: dict[str, float]) -> Any:
        """The first of ``refs`` to be ready. While none is, check every ``POLL_SECONDS`` that some alive node
        has the resources ``need`` (one task's or actor's); after ``node_wait_seconds`` without one, end the
        stage in one line (Ray itself would wait forever for a node that can run them)."""
        unplaceable_since: float | None = None
        while True:
            ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_SECONDS)
            if ready:
                return ready[0]
            if some_node_fits(ray, need):
                unplaceable_since = None
                continue
            now = time.monotonic()
            unplaceable_since = unplaceable_since or now
            if now - unplaceable_since >= self.node_wait_seconds:
                wanted = ", ".join(f"{v:g} {k}" for k, v in need.items() if v) or "any node"
                raise PoolsieveError(
                    f"no node of the Ray cluster can run this stage's work any more (each unit needs {wanted}; "
                    f"waited {self.node_wait_seconds:g} s for one to join); the finished units are kept: "
                    "rerun once the cluster has such nodes (`ray status`)")

    def _waiter(self, need: dict[str, float]) -> Callable[[Any, list[Any]], Any]:
        return lambda ray, refs: self._wait_any(ray, refs, need)


    # ---------------------------------------------------------------- streaming units
    def ordered_map(self, fn: Callable[[U], R], units: Iterable[U], *, max_in_flight: int | None = None,
                    num_cpus: float = 1, num_gpus: float = 0) -> Iterator[R]:
        """Yield ``fn(unit)`` in unit order while later units run; at most ``max_in_flight`` units are
        running or done and waiting for the ones before them."""
        if self.executor == "local":
            for u in units:
                yield fn(u)
            return
        ray = self.ensure_ray()
        remote = self.remote(fn, num_cpus=num_cpus, num_gpus=num_gpus)
        limit = max(1, max_in_flight or self._limit(ray, num_cpus))
        source = enumerate(units)
        pending: dict[Any, tuple[int, U]] = {}
        done: dict[int, R] = {}
        next_out, exhausted = 0, False
        try:
            while True:
                while not exhausted and len(pending) + len(done) < limit:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                    else:
                        pending[remote.remote(item[1])] = item
                if next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                    continue
                if not pending:
                    return
                ready = self._wait_any(ray, list(pending), {"CPU": num_cpus, "GPU": num_gpus})
                i, u = pending.pop(ready)
                done[i] = get_result(ray, ready, describe(u))
        finally:
            cancel(ray, list(pending), force=True)

    def stream(self, fn: Callable[[U], R], units: Iterable[U], *, max_in_flight: int | None = None,
               num_cpus: float = 1, num_gpus: float = 0) -> Iterator[tuple[U, R]]:
        """Yield ``(unit, fn(unit))`` as units complete, at most ``max_in_flight`` running; the next unit is
        drawn from ``units`` only when a slot is free. Locally: one unit at a time, in order."""
        if self.executor == "local":
            for u in units:
                yield u, fn(u)
            return
        ray = self.ensure_ray()
        remote = self.remote(fn, num_cpus=num_cpus, num_gpus=num_gpus)
        limit = max(1, max_in_flight or self._limit(ray, num_cpus))
        yield from as_completed(ray, units, lambda u: remote.remote(u), limit, force_cancel=True,
                                wait=self._waiter({"CPU": num_cpus, "GPU": num_gpus}))

    def stream_generators(self, fn: Callable[[U], Iterator[Any]], units: Iterable[U], *,
                          max_in_flight: int | None = None, buffered: int = 2,
                          num_cpus: float = 1) -> Iterator[tuple[U, Any]]:
        """Run the generator ``fn(unit)`` of each unit (``max_in_flight`` at once) and yield ``(unit, item)``
        as items are made, then ``(unit, END)``. On Ray a task runs at most ``buffered`` items ahead of
        the consumer and an item is an object reference (pass it on to a task or an actor as it is)."""
        if self.executor == "local":
            for u in units:
                for item in fn(u):
                    yield u, item
                yield u, END
            return
        ray = self.ensure_ray()
        remote = self.remote(fn, num_cpus=num_cpus, num_returns="streaming",
                             _generator_backpressure_num_objects=buffered)
        limit = max(1, max_in_flight or self._limit(ray, num_cpus))
        source = iter(units)
        active: dict[Any, U] = {}
        exhausted = False
        try:
            while True:
                exhausted = exhausted or not top_up(source, active, limit, remote.remote)
                if not active:
                    return
                gen = self._wait_any(ray, list(active), {"CPU": num_cpus})
                try:
                    item = next(gen)
                except StopIteration:
                    yield active.pop(gen), END
                    continue
                yield active[gen], item
        finally:
            cancel(ray, list(active), force=False, wait=False)

    def actor_pool(self, cls: type, size: int, *args: Any, num_cpus: float = 1, num_gpus: float = 0,
                   spread: bool = False) -> ActorPool:
        """``size`` workers ``cls(*args)`` (one, in this process, for the local executor); close it when done.
        ``spread``: place them on as many nodes as possible (Ray's ``SPREAD`` strategy)."""
        return ActorPool(self, cls, size, args, num_cpus, num_gpus, spread)

    def node_resources(self) -> list[dict[str, float]]:
        """Each alive node's resources (Ray's ``CPU``, ``memory`` in bytes, ...) for the nodes with CPUs; for the
        local executor, this process's CPUs."""
        if self.executor == "local":
            return [{"CPU": float(_process_cpus())}]
        return [dict(n["Resources"]) for n in self.ensure_ray().nodes()
                if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0] or [{"CPU": 1.0}]

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
        limit = max_in_flight or self._limit(ray, num_cpus)
        pending: dict[Any, int] = {}
        next_i = 0
        try:
            while next_i < len(units) or pending:
                while next_i < len(units) and len(pending) < limit:
                    pending[remote.remote(units[next_i])] = next_i
                    next_i += 1
                ref = self._wait_any(ray, list(pending), {"CPU": num_cpus, "GPU": num_gpus})
                i = pending.pop(ref)
                results[i] = get_result(ray, ref, describe(units[i]))
                progress.update(1, items(results[i]) if items else 0, item_unit)
        finally:
            cancel(ray, list(pending), force=True, wait=False)
        return results


class ActorPool:
    """Long-lived workers ``cls(*args)``: Ray actors (restarted with the same arguments when lost with their
    node, their calls re-sent), or one instance in this process for the local executor."""

    def __init__(self, runtime: Runtime, cls: type, size: int, args: tuple, num_cpus: float, num_gpus: float,
                 spread: bool = False):
        self.local = runtime.executor == "local"
        self._ray = None if self.local else runtime.ensure_ray()
        self._wait = runtime._waiter({"CPU": num_cpus, "GPU": num_gpus})
        if self.local:
            self.actors: list[Any] = [cls(*args)]
        else:
            placement = {"scheduling_strategy": "SPREAD"} if spread else {}
            actor_cls = self._ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=runtime.task_retries,
                                         max_task_retries=runtime.task_retries, **placement)(cls)
            self.actors = [actor_cls.remote(*args) for _ in range(max(1, size))]

    def __len__(self) -> int:
        return len(self.actors)

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every worker; the results in worker order."""
        if self.local:
            return [getattr(a, method)(*args) for a in self.actors]
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        for ref in refs:  # placed and done, or the cluster has no node for them
            self._wait(self._ray, [ref])
        return [get_result(self._ray, ref, f"{method} on a worker") for ref in refs]

    def call_each(self, method: str, args: Sequence[Any]) -> list[Any]:
        """``method(args[w])`` on worker ``w`` (one argument per worker); the results in worker order."""
        if len(args) != len(self.actors):
            raise ValueError(f"call_each: {len(args)} arguments for {len(self.actors)} workers")
        if self.local:
            return [getattr(a, method)(arg) for a, arg in zip(self.actors, args, strict=True)]
        refs = [getattr(a, method).remote(arg) for a, arg in zip(self.actors, args, strict=True)]
        for ref in refs:
            self._wait(self._ray, [ref])
        return [get_result(self._ray, ref, f"{method} on a worker") for ref in refs]

    def stream(self, method: str, items: Iterable[tuple[Any, Any]], per_worker: int = 2) -> Iterator[tuple[Any, Any]]:
        """For each ``(key, arg)``: ``method(arg)`` on the least busy worker (at most ``per_worker`` calls
        each); yield ``(key, result)`` as calls complete. Locally: one call at a time, in order."""
        if self.local:
            for key, arg in items:
                yield key, getattr(self.actors[0], method)(arg)
            return
        load = [0] * len(self.actors)
        worker_of: dict[Any, int] = {}

        def submit(item: tuple[Any, Any]) -> Any:
            a = load.index(min(load))
            load[a] += 1
            ref = getattr(self.actors[a], method).remote(item[1])
            worker_of[ref] = a
            return ref

        def release(ref: Any) -> None:
            load[worker_of.pop(ref)] -= 1

        for item, result in as_completed(self._ray, items, submit, per_worker * len(self.actors),
                                         force_cancel=False, on_done=release, wait=self._wait):
            yield item[0], result

    def close(self) -> None:
        if not self.local and self._ray.is_initialized():
            for a in self.actors:
                with contextlib.suppress(Exception):
                    self._ray.kill(a)
        self.actors = []

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _process_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
