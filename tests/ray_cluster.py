"""A real Ray cluster on this machine (a head node and worker nodes, loopback only), and a worker node that
dies as a machine does while one of its workers runs a given task.

The node's death is made certain to land mid-task: a worker of the node whose process title says it runs
one of the named tasks (Ray titles a busy worker ``ray::<function>`` or ``ray::<Actor>.<method>``) is
stopped with SIGSTOP, then the node's raylet and all its workers are SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

# Nodes are declared dead within about two seconds of their raylet's death. Ray's memory monitor is off: it
# kills workers when the whole machine runs short, and on a shared test machine others use the memory.
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "memory_monitor_refresh_ms": 0}


@contextlib.contextmanager
def ray_cluster(head_cpus: int = 1) -> Iterator[Any]:
    """A head node of ``head_cpus`` CPUs (its ports picked by the OS); add workers with ``add_worker``.
    Every node is removed (its processes ended) and the driver disconnected on the way out."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if ray.is_initialized():  # a Ray of another test: this one drives its own cluster
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "include_dashboard": False, "_system_config": SYSTEM_CONFIG})
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def add_worker(cluster: Any, cpus: int = 1, resources: dict[str, float] | None = None) -> Any:
    node = cluster.add_node(num_cpus=cpus, resources=resources or {})
    cluster.wait_for_nodes()
    return node


def worker_pids(raylet_pid: int) -> list[int]:
    """The raylet's worker processes (its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == raylet_pid:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def freeze_busy_worker(pids: list[int], titles: tuple[str, ...]) -> str | None:
    """Stop (SIGSTOP) a worker among ``pids`` whose title starts with one of ``titles`` and return its title's
    first word; the stopped worker cannot finish its task, so the kill that follows lands mid-task."""
    for pid in pids:
        if title(pid).startswith(titles):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            now = title(pid)
            if now.startswith(titles):
                return now.split()[0]
            os.kill(pid, signal.SIGCONT)  # it finished just before: keep looking
    return None


def warm_up(node: Any) -> None:
    """Start a worker on ``node`` for this process's driver, so that it takes tasks from the start."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    on_node = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    ray.get(ray.remote(num_cpus=1, scheduling_strategy=on_node)(lambda: os.getpid()).remote())


def hold_cpus(node: Any, cpus: int, seconds: float) -> list[Any]:
    """Hold ``cpus`` CPUs of ``node`` for ``seconds`` (sleeping tasks), so that work placed meanwhile lands on
    other nodes; returns the tasks' references."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    sleep = ray.remote(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))(
        lambda: time.sleep(seconds))
    return [sleep.remote() for _ in range(cpus)]


def kill_node(cluster: Any, node: Any) -> None:
    """The node dies as a machine does: its raylet and every worker on it at once, then its other processes."""
    raylet_pid = node.all_processes["raylet"][0].process.pid
    for pid in worker_pids(raylet_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.kill_raylet()
    cluster.remove_node(node, allow_graceful=False)


def run_killing_a_node(cluster: Any, run: Callable[[], Any], titles: tuple[str, ...], *, cpus: int = 1,
                       resources: dict[str, float] | None = None, warm: bool = True,
                       timeout: float = 300) -> dict[str, Any]:
    """Add a worker node of ``cpus`` CPUs (and custom ``resources``), call ``run()`` in a thread, and kill the node once one of its
    workers runs a task titled ``titles``. Returns ``{"result" or "error", "killed_during": title or None}``;
    ``run`` must end within ``timeout`` seconds of the kill."""
    node = add_worker(cluster, cpus, resources)
    if warm:
        warm_up(node)
    raylet_pid = node.all_processes["raylet"][0].process.pid
    pids = worker_pids(raylet_pid)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline, polls, task = time.monotonic() + timeout, 0, None
    while thread.is_alive() and time.monotonic() < deadline and not (task := freeze_busy_worker(pids, titles)):
        polls += 1
        if polls % 10 == 0:  # workers the raylet started since (a task may land on a fresh one)
            pids = worker_pids(raylet_pid)
        time.sleep(0.001)
    outcome["killed_during"] = task
    kill_node(cluster, node)
    thread.join(timeout=timeout)
    assert not thread.is_alive(), f"the run did not end within {timeout:.0f} s of the node's death"
    return outcome
