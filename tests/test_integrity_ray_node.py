"""Issue 13, finding 10 (Ray): a reshard task lost with its node is retried, and when retries are used up the
run ends in one line naming the unit, with nothing left under the final names. Issue 16: when no node left
can run the tasks, the run ends in one line too, and the rerun on a repaired cluster resumes.

A real two-node Ray cluster runs on this machine (a head and a worker node, one CPU each); the worker
node's raylet is SIGKILLed while one of its workers is running a reshard task, found by the process title
Ray gives a busy worker (``ray::scan_shard`` / ``ray::write_shard``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from factories import make_samples, write_img2dataset_shards
from ray_cluster import add_worker, hold_cpus, ray_cluster, run_killing_a_node
from resources import starts

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.formats import write_subset
from poolsieve.core.runtime import Runtime
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard

TASK_TITLES = ("ray::scan_shard", "ray::write_shard")


@pytest.fixture
@starts("ray")
def cluster():
    """A head node; each run below adds a worker node and kills it."""
    with ray_cluster() as c:
        yield c


def reshard_killing_a_node(cluster: Any, ws: Workspace, cfg: ReshardConfig, runtime: Runtime) -> dict[str, Any]:
    """Start the reshard on a head and a worker node; SIGKILL the worker node while it runs a task. The head's
    CPU is held for the first seconds, so that the first tasks land on the worker node (on a fast head they
    could all run there before the worker node took one)."""
    import ray

    def run() -> dict[str, Any]:
        held = hold_cpus(cluster.head_node, 1, seconds=6)
        time.sleep(2)  # the head's CPU is taken before reshard places its tasks
        try:
            return reshard(ws, cfg, runtime, overwrite=True)
        finally:
            ray.get(held)

    outcome = run_killing_a_node(cluster, run, TASK_TITLES)
    if "result" in outcome:
        outcome["summary"] = outcome.pop("result")
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


@pytest.mark.ray  # its own cluster, one whose only worker node dies
def test_cluster_left_without_cpus_ends_in_one_line_and_the_rerun_resumes(tmp_path):
    """The head has no CPUs: once the one worker node dies, nothing can run reshard's tasks."""
    ws = Workspace.create(tmp_path / "ws")
    samples = make_samples(600, seed=2, image_size=48)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=30)
    write_subset(ws.subset_path("all"), uids_to_pairs([s.uid for s in samples[::2]]))
    one_process = reshard(ws, ReshardConfig(subset="all", name="local", shard_size=7), Runtime(executor="local"))
    cfg = ReshardConfig(subset="all", shard_size=7)
    with ray_cluster(head_cpus=0) as cluster:
        runtime = Runtime(executor="ray", address=cluster.address, node_wait_seconds=3)
        runtime.ensure_ray()
        stranded = run_killing_a_node(cluster, lambda: reshard(ws, cfg, runtime), TASK_TITLES)
        assert stranded["killed_during"], "the node died before it ran any reshard task"
        error = stranded.get("error")
        assert isinstance(error, PoolsieveError), error
        assert "\n" not in str(error) and "no node of the Ray cluster can run" in str(error), str(error)

        add_worker(cluster)  # the cluster repaired: the same command resumes
        resumed = reshard(ws, cfg, runtime)
    assert resumed["output_count"] == one_process["output_count"] == 300
    assert tar_bytes(ws.filtered_dir("all")) == tar_bytes(ws.filtered_dir("local"))
    assert not list(ws.filtered_dir("all").glob(".*.tmp"))
