"""Every embedding filter on a two-node Ray cluster: the same uids as in one process, the work spread over
both nodes, and no task reading more than its own tables' embeddings (the driver none at all).

Each process's opens of the pool's ``.npz`` files are logged by an audit hook (``npz_audit``) that Ray
installs in every worker (``worker_process_setup_hook``). Table-by-table passes open one table's file
per task; D2's search tasks open the consecutive tables of their rows, at most ``search_rows`` rows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from embedding_pool import build_embedding_pool, make_pool
from npz_audit import ENV, install, opens
from ray_cluster import add_worker, ray_cluster

from poolsieve.core.runtime import Runtime
from poolsieve.filters.knn.sharded import search_rows
from poolsieve.filters.registry import get_filter

pytestmark = pytest.mark.ray  # a Ray cluster of two nodes starts (tens of seconds on two cores)

SIZES = (400, 380, 420, 390, 410, 400, 395, 405, 385, 415, 400, 390)
BUDGET = "64MiB"
FILTERS = {
    "d2": ("d2_pruning", {"knn": "ivf", "nlist": 12, "fraction": 0.3, "device": "cpu"}),
    "d2_exact": ("d2_pruning", {"knn": "exact", "count": 500, "features": "image", "device": "cpu"}),
    "semdedup": ("semdedup", {"eps": 0.15, "clusters": 8, "device": "cpu"}),
    "semantic": ("dedup", {"method": "semantic", "eps": 0.2, "clusters": 5, "order": "random"}),
    "image_based": ("image_based", {"target": "target", "clusters": 8, "device": "cpu"}),
    "dedup": ("dedup", {}),
    "decontaminate": ("decontaminate", {"reference": "eval_tasks", "threshold": 0.95}),
}


def eval_reference(root: Path) -> None:
    """An evaluation reference set: a few of the pool's images (near copies) and one exact sha256."""
    import pandas as pd

    with np.load(root / "scores" / "00003.npz") as z:
        img = z["b32_img"][10:40]
    sha = pd.read_parquet(root / "scores" / "00005.parquet")["sha256"].dropna().iloc[:2].to_numpy()
    np.savez(root / "references" / "eval_tasks.npz", b32_img=img, sha256=sha.astype(str))


def test_embedding_filters_on_two_nodes_equal_one_process_and_read_only_their_tables(tmp_path, monkeypatch):
    root = build_embedding_pool(tmp_path / "ws", sizes=SIZES)
    eval_reference(root)
    one_process = {name: get_filter(f)(make_pool(root, memory_budget=BUDGET), **p) for name, (f, p) in FILTERS.items()}
    log = tmp_path / "opens"
    log.mkdir()
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, *sys.path]))
    monkeypatch.setenv(ENV, str(log))
    with ray_cluster(head_cpus=1) as cluster:
        add_worker(cluster, cpus=1)
        import ray

        ray.init(address=cluster.address, runtime_env={"worker_process_setup_hook": "npz_audit.install"})
        install()  # the driver's opens too
        pool = make_pool(root, Runtime(executor="ray", address=cluster.address), memory_budget=BUDGET)
        for name, (f, p) in FILTERS.items():
            assert get_filter(f)(pool, **p) == one_process[name], name
        monkeypatch.delenv(ENV)  # the hook stays installed in this process: it logs no more
    seen = opens(str(log))
    assert seen, "no embedding file was opened by any logged process"
    assert not [s for s in seen if s[0] == os.getpid()], "the driver read embeddings"
    assert len({node for _, node, _, _ in seen}) == 2, "the work did not spread over both nodes"
    files = sorted({file for *_, file in seen})
    assert len(files) == len(SIZES)
    most = max(search_rows(make_pool(root, memory_budget=BUDGET).budget), max(SIZES))
    by_task: dict[str, set[str]] = {}
    for _, _, task, file in seen:
        by_task.setdefault(task, set()).add(file)
    for task, opened in by_task.items():
        index = sorted(files.index(f) for f in opened)
        assert index == list(range(index[0], index[-1] + 1)), f"task {task} read scattered tables {opened}"
        assert sum(SIZES[i] for i in index) <= most + max(SIZES), f"task {task} read {opened}"
    assert max(len(v) for v in by_task.values()) < len(SIZES)  # no task read the whole pool
