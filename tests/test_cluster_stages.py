"""Issue 16: each stage run on a two-node Ray cluster (``Runtime(address=...)``, what ``--ray-address`` makes)
survives the loss of its worker node midway, and its output equals a one-machine run.

The worker node is SIGKILLed (raylet and workers) while one of its workers runs the stage's task, found by
its process title (see ``ray_cluster``): download's shard tasks, score's readers and encoder worker,
image_based's per-table tasks. Evaluate runs in the driver's own process, so its test checks that it works
and gives the same results with ``--ray-address``. Reshard's own test is ``test_integrity_ray_node.py``.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from factories import make_samples, write_img2dataset_shards
from ray_cluster import hold_cpus, ray_cluster, run_killing_a_node
from resources import starts
from test_download_support import FAST, assert_shards_whole, make_served_pool
from test_score import save_tiny_checkpoint

from poolsieve.core.formats import embedding_keys, read_score_table
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.cli import main
from poolsieve.pipeline.download.stage import DownloadConfig, download
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter
from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

# The head has two CPUs: once the worker node is gone, a restarted encoder and a reader still fit.
HEAD_CPUS = 2


@pytest.fixture(scope="module")
@starts("ray")
def cluster():
    with ray_cluster(HEAD_CPUS) as c:
        yield c


@pytest.fixture(scope="module")
def cluster_runtime(cluster) -> Runtime:
    runtime = Runtime(executor="ray", address=cluster.address)
    runtime.ensure_ray()
    return runtime


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Workspace, Path]:
    """Six shards of 24 samples and a tiny checkpoint; scored on one machine (``--executor local``)."""
    root = tmp_path_factory.mktemp("cluster")
    ws = Workspace.create(root / "ws")
    write_img2dataset_shards(ws.shards_dir, make_samples(6 * 24, seed=16, image_size=40), per_shard=24)
    checkpoint = save_tiny_checkpoint(root / "tiny.pt")
    score_pool(ws, score_config(checkpoint), Runtime(executor="local"), quiet=True)
    return ws, checkpoint


def score_config(checkpoint: Path) -> ScoreConfig:
    return ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=8, threads=1, language=False)


def copy_workspace(ws: Workspace, dest: Path, *folders: str) -> Workspace:
    new = Workspace.create(dest)
    for folder in folders:
        shutil.copytree(ws.root / folder, new.root / folder, dirs_exist_ok=True)
    return new


def score_tables(ws: Workspace) -> dict[str, Any]:
    out = {}
    for table in sorted(ws.scores_dir.glob("*.parquet")):
        with np.load(table.with_suffix(".npz"), allow_pickle=False) as emb:
            out[table.stem] = (read_score_table(table), {k: emb[k] for k in sorted(emb.files)})
    return out


def assert_same_scores(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for shard in a:
        (ta, ea), (tb, eb) = a[shard], b[shard]
        assert ta.equals(tb), shard
        assert sorted(ea) == sorted(eb)
        for key in ea:
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=f"{shard} {key}")


def expect_survived(outcome: dict[str, Any]) -> Any:
    assert outcome["killed_during"], "the worker node died before it ran any of the stage's tasks"
    assert "error" not in outcome, repr(outcome.get("error"))
    return outcome["result"]


def test_score_survives_a_lost_node(pool, cluster, cluster_runtime, tmp_path):
    """The encoder worker is made while the head's CPUs are held, so it lands on the worker node, which dies
    while it encodes: the encoder restarts on the head, its calls are re-sent and lost readers re-run."""
    ws, checkpoint = pool
    again = copy_workspace(ws, tmp_path / "ws", "shards")

    def score() -> dict[str, Any]:
        held = hold_cpus(cluster.head_node, HEAD_CPUS, seconds=8)
        time.sleep(2)  # the head's CPUs are taken before the encoder is placed
        summary = score_pool(again, score_config(checkpoint), cluster_runtime, quiet=True)
        ray.get(held)
        return summary

    outcome = run_killing_a_node(cluster, score, ("ray::EncoderActor.encode",))
    assert outcome["killed_during"] == "ray::EncoderActor.encode"
    summary = expect_survived(outcome)
    assert summary["scored now"] == 6 and summary["failed shards"] == 0
    assert_same_scores(score_tables(again), score_tables(ws))
    assert not list(again.scores_dir.glob(".*.tmp"))


IMAGE_BASED = "image_based(target=target, clusters=4, caption_filter=false, device=cpu)"


def test_embedding_filter_survives_a_lost_node(pool, cluster, cluster_runtime, tmp_path):
    """image_based runs its sample and assignment passes as Ray tasks, one per score table."""
    ws, _ = pool
    refs = ws.root / "references"
    if not refs.exists():  # the target set: a few of the pool's own images
        refs.mkdir()
        with np.load(ws.embeddings_path("00000"), allow_pickle=False) as z:
            key = embedding_keys("poolsieve_tiny")[0]
            np.savez(refs / "target.npz", **{key: z[key][:6]})
    config = FilterConfig(subsets={"near": IMAGE_BASED})
    one_machine = run_filter(ws, config, Runtime(executor="local"))
    again = copy_workspace(ws, tmp_path / "ws", "scores", "references")
    outcome = run_killing_a_node(cluster, lambda: run_filter(again, config, cluster_runtime),
                                 ("ray::take_sample", "ray::keep", "ray::<lambda>"))
    made = expect_survived(outcome)
    assert made["near"]["count"] == one_machine["near"]["count"] > 0
    assert again.subset_path("near").read_bytes() == ws.subset_path("near").read_bytes()


def shard_contents(shards_dir: Path) -> dict[str, Any]:
    """Per shard: every tar member's bytes and the parquet's rows by key (img2dataset writes samples in the
    order their fetches complete, on one machine too), not the stats' timings."""
    import pandas as pd

    out: dict[str, Any] = {}
    for tar_path in sorted(shards_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        rows = pd.read_parquet(tar_path.with_suffix(".parquet")).sort_values("key").to_dict("records")
        stats = json.loads((shards_dir / f"{tar_path.stem}_stats.json").read_text())
        out[tar_path.stem] = (members, repr(rows), stats["count"], stats["successes"])
    return out


@pytest.mark.download
def test_download_survives_a_lost_node(cluster, tmp_path):
    """The Ray distributor's shard tasks (in the download runner, a driver of its own) on the cluster."""
    served = make_served_pool(tmp_path / "ws", n=32, per_file=16)
    try:
        cfg = DownloadConfig(samples_per_shard=8, **FAST)
        local = copy_workspace(served.ws, tmp_path / "one", "metadata")
        one_machine = download(local, DownloadConfig(samples_per_shard=8, **{**FAST, "processes": 1}),
                               Runtime(executor="local"))
        runtime = Runtime(executor="ray", address=cluster.address)
        outcome = run_killing_a_node(cluster, lambda: download(served.ws, cfg, runtime),
                                     ("ray::_download_one_shard",), warm=False)
        report = expect_survived(outcome)
    finally:
        served.server.stop()
    assert report["this_run"]["distributor"] == "ray" and report["missing_shards"] == []
    assert report["successes"] == one_machine["successes"] > 0
    assert_shards_whole(served.ws.shards_dir)
    assert shard_contents(served.ws.shards_dir) == shard_contents(local.shards_dir)


def test_evaluate_with_ray_address_equals_one_machine(pool, cluster, tmp_path):
    """evaluate is a single-process stage on the driver (a model and small task sets: nothing to spread over
    nodes); with --ray-address it runs there all the same and writes the same results."""
    ws, checkpoint = pool
    common = ["evaluate", "-w", str(ws.root), "--model", f"poolsieve-tiny:{checkpoint}", "--synthetic-samples", "30",
              "--device", "cpu"]
    assert main([*common, "--executor", "local", "--output", str(tmp_path / "local")]) == 0
    assert main([*common, "--ray-address", cluster.address, "--output", str(tmp_path / "ray")]) == 0

    def metrics(folder: Path) -> list[Any]:
        rows = [json.loads(line) for line in (folder / "other_results.jsonl").read_text().splitlines()]
        return [(r["key"], r["metrics"]) for r in rows]

    assert metrics(tmp_path / "ray") == metrics(tmp_path / "local")
    assert len(metrics(tmp_path / "local")) == 2


def test_a_stream_closed_after_the_driver_left_ray_does_not_rejoin(cluster, cluster_runtime):
    """A stage's stream that the garbage collector closes after ``Runtime.shutdown`` (an error ended the
    command) must not call Ray: Ray would start or join a cluster again and the command would not exit."""
    stream = cluster_runtime.stream(lambda x: time.sleep(x) or x, [0, 30, 30], max_in_flight=3)
    assert next(stream) == (0, 0)
    ray.shutdown()
    stream.close()  # its cleanup runs now
    assert not ray.is_initialized()
    cluster_runtime.ensure_ray()  # the next test's driver
