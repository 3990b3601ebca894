"""The Ray distributor on a Ray cluster of two nodes started on this machine."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from resources import starts
from test_download_support import FAST, assert_shards_whole, make_served_pool, parquet_rows, tar_uids

from poolsieve.core.runtime import Runtime
from poolsieve.pipeline.download.process import RUNNER_LOG_NAME
from poolsieve.pipeline.download.stage import DownloadConfig, download


@pytest.fixture
@starts("ray")
def two_node_cluster():
    """A head node and a worker node (1 CPU each) on this machine; torn down after the test."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.download
def test_ray_distributor_on_two_nodes(tmp_path: Path, two_node_cluster) -> None:
    assert len(two_node_cluster.list_all_nodes()) == 2
    pool = make_served_pool(tmp_path / "ws", n=40, per_file=20)
    try:
        cfg = DownloadConfig(samples_per_shard=10, **FAST)
        report = download(pool.ws, cfg, Runtime(executor="ray", address=two_node_cluster.address))
        assert report["this_run"]["distributor"] == "ray"
        assert report["shards"] == 4 and report["successes"] == 40 and report["missing_shards"] == []
        in_tars = tar_uids(pool.ws.shards_dir)
        assert set(in_tars) == set(pool.metadata["uid"]) and set(in_tars.values()) == {1}
        assert parquet_rows(pool.ws.shards_dir)["uid"].is_unique
        assert_shards_whole(pool.ws.shards_dir)
        log = (pool.ws.shards_dir / RUNNER_LOG_NAME).read_text()
        nodes = re.findall(r"poolsieve: shard \d+ done on node (\w+)", log)
        assert len(nodes) == 4 and len(set(nodes)) == 2, log[-2000:]  # both nodes made shards
    finally:
        pool.server.stop()
