"""Training reads its samples in an order the download does not decide.

One pool is downloaded twice from a server on 127.0.0.1 that answers in another order each time, with
other process and thread counts but the same samples per shard: img2dataset writes each shard's samples
in the order their fetches finish, so the downloaded tars differ. Reshard writes in pool-shard, then key
order (the key is the metadata row), so the resharded tars are byte-identical, and ``train-scorer`` given
the same seed set and seed on both trains the same weights. A third download with another
``samples_per_shard`` gives other keys (img2dataset's ``.json`` members hold them) but the same samples,
in the same order, with the same image and caption bytes: the training data does not change.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_score_determinism import ShufflingServer

from poolsieve.core.formats import write_subset
from poolsieve.core.models import read_checkpoint_state
from poolsieve.core.runtime import Runtime
from poolsieve.core.uids import UidSet
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.demo.synthetic_pool import PoolSpec, generate_pool
from poolsieve.pipeline.download.stage import DownloadConfig, download
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard
from poolsieve.pipeline.train_scorer import ScorerConfig, train_scorer

SAMPLES = 90
DOWNLOADS = ((30, 1, 12), (30, 2, 5), (45, 1, 8))  # samples per shard, processes, threads


def tar_members(tar: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as t:
        return [(m.name, t.extractfile(m).read()) for m in t if m.isfile()]


def training_view(folder: Path) -> list[tuple[str, bytes]]:
    """What training reads from a resharded folder, in order: every image and caption member."""
    return [(name, data) for tar in sorted(folder.glob("*.tar")) for name, data in tar_members(tar)
            if not name.endswith(".json")]


def download_pool(tmp_path: Path) -> list[Workspace]:
    root = tmp_path / "pool"
    (root / "synthetic").mkdir(parents=True)
    workspaces = []
    with ShufflingServer(root / "synthetic") as server:
        generate_pool(root, PoolSpec(num_samples=SAMPLES, samples_per_file=SAMPLES // 2, image_size=48, seed=5,
                                     base_url=server.url, eval_samples=4, retrieval_samples=4, target_samples=4))
        names = sorted(p.name for p in (root / "synthetic" / "images").glob("*.jpg"))
        server.missing = set(names[::13])  # failed downloads: gaps in the keys
        for i, (per_shard, processes, threads) in enumerate(DOWNLOADS):
            ws = Workspace.create(tmp_path / f"ws{i}")
            shutil.copytree(root / "metadata", ws.metadata_dir, dirs_exist_ok=True)
            server.reshuffle(names, seed=i)
            download(ws, DownloadConfig(samples_per_shard=per_shard, image_size=64, processes=processes,
                                        threads=threads, timeout=10.0, fetch_deadline=20.0, retries=0,
                                        watchdog_seconds=300, allow_networks=["127.0.0.1/32"],
                                        min_success_rate=0.5), Runtime(executor="local"))
            workspaces.append(ws)
    return workspaces


@pytest.mark.download
@pytest.mark.train
def test_reshard_and_train_scorer_do_not_follow_download_order(tmp_path):
    workspaces = download_pool(tmp_path)
    first, second, other_cut = workspaces
    assert [p.name for p in first.shard_tars()] == [p.name for p in second.shard_tars()]
    orders = [[name for name, _ in tar_members(tar)] for ws in (first, second) for tar in ws.shard_tars()]
    assert orders[:3] != orders[3:], "both downloads wrote their samples alike: nothing tested"

    uids = pd.concat([pd.read_parquet(f, columns=["uid"]) for f in first.metadata_files()])["uid"].to_numpy()
    seed_set = tmp_path / "seed_set.npy"  # the whole pool (failed downloads are left out as missing)
    write_subset(seed_set, UidSet.from_hex(uids))
    for ws in workspaces:
        reshard(ws, ReshardConfig(subset=str(seed_set), name="all", shard_size=32), Runtime(executor="local"))
    tars = [sorted(ws.filtered_dir("all").glob("*.tar")) for ws in workspaces]
    assert len(tars[0]) == 3 and [p.name for p in tars[0]] == [p.name for p in tars[1]]
    for a, b in zip(tars[0], tars[1], strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between the two downloads"

    # another samples_per_shard: other keys in the .json members, the same training data in the same order
    assert training_view(first.filtered_dir("all")) == training_view(other_cut.filtered_dir("all"))
    assert [p.read_bytes() for p in tars[0]] != [p.read_bytes() for p in tars[2]], "keys alike: nothing tested"

    weights = []
    for ws in (first, second):
        summary = train_scorer(ws, ScorerConfig(seed=str(seed_set), samples_seen=128, batch_size=16, workers=2,
                                                threads=1, random_seed=7), Runtime(executor="local"))
        weights.append(read_checkpoint_state(Path(summary["weights"])))
    assert list(weights[0]) == list(weights[1])
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not differ, f"the two scorers differ in {len(differ)} tensors, e.g. {differ[0]}"
