"""Issue 16: ``poolsieve run --config experiment.yaml --ray-address ADDR`` runs a whole experiment on a
two-node Ray cluster and resumes after its driver is SIGKILLed: first while score is midway (some score
tables written), then while filter/reshard run (score finished). Each rerun skips what is finished and
the end result equals an uninterrupted one-machine run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from factories import make_samples, write_img2dataset_shards
from ray_cluster import add_worker, ray_cluster
from test_score import save_tiny_checkpoint

from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.subprocess]  # three drivers start on a two-node cluster

SHARDS = 6
POOLSIEVE = [sys.executable, "-m", "poolsieve.pipeline.cli"]


def experiment(ws: Path, checkpoint: Path, **top: object) -> dict[str, object]:
    return {"workspace": str(ws), **top,
            "score": {"models": [f"poolsieve-tiny:{checkpoint}"], "chunk_size": 8, "threads": 1, "language": False},
            "filter": {"subsets": {"all": "no_filter",
                                   "top": {"clip_score": {"model": "poolsieve_tiny", "fraction": 0.5}}}},
            "reshard": {"shard_size": 10}}


def make_pool(root: Path) -> Workspace:
    ws = Workspace.create(root)
    write_img2dataset_shards(ws.shards_dir, make_samples(SHARDS * 16, seed=61, image_size=40), per_shard=16)
    return ws


def outputs(ws: Workspace) -> dict[str, object]:
    """Everything the experiment made, as bytes or arrays (reshard's meta.json aside: it holds timings)."""
    out: dict[str, object] = {}
    for path in sorted(ws.scores_dir.glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            out[path.name] = {k: z[k].tobytes() for k in sorted(z.files)}
    for path in sorted(ws.scores_dir.glob("*.parquet")):
        import pandas as pd

        out[path.name] = pd.read_parquet(path).to_json()
    for path in sorted(ws.subsets_dir.glob("*.npy")):
        out[path.name] = path.read_bytes()
    for path in sorted(ws.root.glob("filtered/*/*.tar")):
        out[str(path.relative_to(ws.root))] = path.read_bytes()
    return out


def run_until(cmd: list[str], log: Path, stop_when: Callable[[], bool] | None, timeout: float = 300) -> int:
    """Run ``cmd``; SIGKILL it (its whole process group, as a dying machine would) once ``stop_when()``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if stop_when is not None and stop_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    return proc.wait()
                time.sleep(0.02)
            assert proc.poll() is not None, f"{cmd} still running after {timeout:.0f} s; see {log}"
            return proc.returncode
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_run_on_a_cluster_resumes_after_the_driver_is_killed(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt")
    local_ws = make_pool(tmp_path / "local")
    local_cfg = tmp_path / "local.yaml"
    local_cfg.write_text(json.dumps(experiment(local_ws.root, checkpoint, executor="local")))
    assert main(["run", "--config", str(local_cfg)]) == 0

    ws = make_pool(tmp_path / "ws")
    config = tmp_path / "experiment.yaml"
    config.write_text(json.dumps(experiment(ws.root, checkpoint)))
    with ray_cluster() as cluster:
        add_worker(cluster)
        cmd = [*POOLSIEVE, "run", "--config", str(config), "--ray-address", cluster.address]

        def scored() -> int:
            return len(list(ws.scores_dir.glob("*.parquet")))

        # 1. Killed once score has written its first table.
        assert run_until(cmd, tmp_path / "run1.log", lambda: scored() >= 1) == -signal.SIGKILL
        first = scored()
        assert 1 <= first < SHARDS, f"the kill should land mid-score ({first} of {SHARDS} tables)"
        # 2. Killed once filter has written its first subset: score resumed, doing only what was missing.
        assert run_until(cmd, tmp_path / "run2.log",
                         lambda: any(ws.subsets_dir.glob("*.npy")) if ws.subsets_dir.is_dir() else False
                         ) == -signal.SIGKILL
        second = (tmp_path / "run2.log").read_text()
        skipped = [ln for ln in second.splitlines() if "already scored (skipped)" in ln]
        assert skipped and int(skipped[0].split()[-1]) >= first, second[-3000:]
        # 3. To the end: score and the finished subsets are skipped; the result is the uninterrupted one.
        assert run_until(cmd, tmp_path / "run3.log", None) == 0, (tmp_path / "run3.log").read_text()[-3000:]
        third = (tmp_path / "run3.log").read_text()
    assert "scored now" in third and any(ln.split()[-1] == "0" for ln in third.splitlines() if "scored now" in ln)
    assert "skipped (up to date)" in third, third[-3000:]
    assert outputs(ws) == outputs(local_ws)
    assert len([k for k in outputs(ws) if k.startswith("filtered/")]) >= 2
