"""Issue 13, finding 10 (Ray): a reshard task lost with its node is retried, and when retries are used up the
run ends in one line naming the unit, with nothing left under the final names.

A real two-node Ray cluster runs on this machine (a head and a worker node, one CPU each); the worker
node's raylet is SIGKILLed while one of its workers is running a reshard task, found by the process title
Ray gives a busy worker (``ray::scan_shard`` / ``ray::write_shard``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.formats import write_subset
from poolsieve.core.runtime import Runtime
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard

pytestmark = pytest.mark.slow  # two Ray nodes start and one dies: about a minute on two cores

TASK_TITLES = ("ray::scan_shard", "ray::write_shard")


@pytest.fixture
def cluster():
    """A head and a worker node; nodes are declared dead quickly. Torn down (``ray stop`` of both) always."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if ray.is_initialized():  # a Ray of another test: this one drives its own cluster
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


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


def freeze_busy_worker(pids: list[int]) -> str | None:
    """Stop (SIGSTOP) a worker among ``pids`` that is running a reshard task and return the task; the stopped
    worker cannot finish it, so the kill that follows lands mid-task for sure."""
    for pid in pids:
        if title(pid).startswith(TASK_TITLES):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            now = title(pid)
            if now.startswith(TASK_TITLES):
                return now.split()[0]
            os.kill(pid, signal.SIGCONT)  # it finished just before: keep looking
    return None


def warm_up(node: Any) -> None:
    """Start a worker on ``node`` for this driver, so that it takes reshard's tasks from the start."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    on_node = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    ray.get(ray.remote(num_cpus=1, scheduling_strategy=on_node)(lambda: os.getpid()).remote())


def reshard_killing_a_node(cluster: Any, ws: Workspace, cfg: ReshardConfig, runtime: Runtime) -> dict[str, Any]:
    """Add a worker node, start the reshard, SIGKILL the node's raylet while it runs a task; the outcome."""
    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    warm_up(node)
    raylet_pid = node.all_processes["raylet"][0].process.pid
    pids = worker_pids(raylet_pid)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = reshard(ws, cfg, runtime, overwrite=True)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline, polls, task = time.monotonic() + 120, 0, None
    while thread.is_alive() and time.monotonic() < deadline and not (task := freeze_busy_worker(pids)):
        polls += 1
        if polls % 10 == 0:  # workers the raylet started since (a task may land on a fresh one)
            pids = worker_pids(raylet_pid)
        time.sleep(0.001)
    outcome["killed_during"] = task
    # The node dies as a machine does: its raylet and every worker on it at once.
    for pid in worker_pids(raylet_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.kill_raylet()
    thread.join(timeout=300)
    cluster.remove_node(node, allow_graceful=False)  # the node's other processes, and the cluster's node list
    assert not thread.is_alive(), "reshard did not end after the node died"
    return outcome


def tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_task_lost_with_its_node_is_retried_then_refused_in_one_line(tmp_path, cluster):
    ws = Workspace.create(tmp_path / "ws")
    samples = make_samples(1200, seed=1, image_size=48)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=30)
    write_subset(ws.subset_path("all"), uids_to_pairs([s.uid for s in samples[::3]]))
    one_process = reshard(ws, ReshardConfig(subset="all", name="local", shard_size=7), Runtime(executor="local"))

    runtime = Runtime(executor="ray", address=cluster.address)
    runtime.ensure_ray()
    retried = reshard_killing_a_node(cluster, ws, ReshardConfig(subset="all", shard_size=7), runtime)
    assert retried["killed_during"], "the node died before it ran any reshard task"
    assert "error" not in retried, retried.get("error")
    assert retried["summary"]["output_count"] == one_process["output_count"] == 400
    out = ws.filtered_dir("all")
    assert tar_bytes(out) == tar_bytes(ws.filtered_dir("local"))
    assert not list(out.glob(".*.tmp"))

    no_retries = Runtime(executor="ray", address=cluster.address, task_retries=0)
    failed = reshard_killing_a_node(cluster, ws, ReshardConfig(subset="all", name="once", shard_size=7), no_retries)
    assert failed["killed_during"], "the node died before it ran any reshard task"
    error = failed.get("error")
    assert isinstance(error, PoolsieveError), error
    text = str(error)
    assert "\n" not in text and "Ray lost the worker or node running it" in text
    assert str(ws.shards_dir) in text or str(ws.filtered_dir("once")) in text, text  # names the unit
    once = ws.filtered_dir("once")
    assert [p.name for p in once.iterdir() if not p.name.startswith(".")] == [], "nothing under the final names"
