"""Two downloads of one pool give byte-identical subsets from every built-in filter.

The built-in pool (coloured shapes with planted duplicates, near duplicates, evaluation copies) is
served from 127.0.0.1 by a server that answers each image after a delay drawn from a new permutation
for each download (``test_score_determinism.ShufflingServer``), so img2dataset writes each shard's
samples in another order each time. The two downloads also differ in process and thread counts and in
samples per shard, and the second reads the pool's metadata rows shuffled into three files instead of
two: score sorts each shard's rows by key (the input row), so downloads of the same metadata give
byte-identical score tables (``test_score_determinism``) and any deterministic filter would pass; the
same pool listed in another order (another split of the metadata, files listed in another order) and
cut into other shards stores every row elsewhere. The workspaces are scored with real batches, 16
images per forward in one and 7 in the other: score pads a short batch (a shard's end) to the batch's
shape, so a sample's embedding does not depend on where the shard cut its batch, and the two pools hold
the same numbers uid by uid (the test checks it), and every registered filter (``test_filters_order.CASES``'s filters, each with parameters for this
pool) makes its subset, in one workspace in this process and in the other on Ray; every ``.npy`` must
be byte-identical.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_filters_order import CASES
from test_score import save_tiny_checkpoint
from test_score_determinism import ShufflingServer

from poolsieve.core.formats import read_uidset
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.filters.registry import FILTERS, load_builtin_filters
from poolsieve.pipeline.demo.synthetic_pool import PoolSpec, generate_pool
from poolsieve.pipeline.download.stage import DownloadConfig, download
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter
from poolsieve.pipeline.score.stage import ScoreConfig, run, score_pool

SAMPLES = 160
COLUMN = "clip_poolsieve_tiny_similarity_score"
SPECS = {
    "no_filter": "no_filter",
    "basic": "basic(min_side=32)",
    "basic_filter": "basic_filter(min_side=16, max_aspect=6.0)",
    "clip30": f"clip_score(column={COLUMN}, fraction=0.3)",
    "clip_t": f"clip_score(column={COLUMN}, threshold=0.0)",
    "text_based": "text_based",
    "text_based_in1k": "text_based_in1k",
    "laion2b": f"laion2b(column={COLUMN}, threshold=0.0)",
    "laion2b_fasttext": f"laion2b_fasttext(column={COLUMN}, threshold=0.0)",
    "image_based": "image_based(target=target, clusters=6, device=cpu)",
    "image_based_half": "image_based(target=target, clusters=4, sample_ratio=0.5, seed=3, device=cpu)",
    "dedup": "dedup",
    "dedup_semantic": "dedup(method=semantic, eps=0.0001, clusters=4, order=random, device=cpu)",
    "semdedup": "semdedup(eps=0.0001, clusters=5, device=cpu)",
    "semdedup_any": "semdedup(eps=0.0002, clusters=4, order=easy, against=any, features=image+text, sample_ratio=0.5, "
                    "device=cpu)",
    "d2": "d2_pruning(knn=exact, fraction=0.3, device=cpu)",
    "d2_ivf": "d2_pruning(knn=ivf, nlist=6, fraction=0.3, device=cpu)",
    "d2_image": "d2_pruning(knn=exact, features=image, count=40, k=3, device=cpu)",
    "decontaminate": "decontaminate(reference=eval_tasks, threshold=0.9999)",
}


def download_config(per_shard: int, processes: int, threads: int) -> DownloadConfig:
    return DownloadConfig(samples_per_shard=per_shard, image_size=64, processes=processes, threads=threads,
                          timeout=10.0, fetch_deadline=20.0, retries=0, watchdog_seconds=300,
                          allow_networks=["127.0.0.1/32"], min_success_rate=0.5)


def shuffled_metadata(source: Path, dest: Path, files: int) -> None:
    """The metadata rows of ``source`` shuffled and split into ``files`` parquet files in ``dest``."""
    rows = pd.concat([pd.read_parquet(p) for p in sorted(source.glob("*.parquet"))]).sample(frac=1, random_state=1)
    dest.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(rows)), files)):
        rows.iloc[part].to_parquet(dest / f"{i:05d}.parquet", index=False)


def pool_content(ws: Workspace) -> dict[str, tuple]:
    """uid -> (status, score, image and text embedding bytes), in the order the tables store them."""
    out = {}
    for table in ws.score_tables():
        df = pd.read_parquet(table)
        with np.load(table.with_suffix(".npz")) as z:
            img, txt = z["poolsieve_tiny_img"], z["poolsieve_tiny_txt"]
        for i, uid in enumerate(df["uid"]):
            out[uid] = (df["status"].iloc[i], float(df[COLUMN].iloc[i]), img[i].tobytes(), txt[i].tobytes())
    return out


def test_every_registered_filter_has_a_subset_here():
    load_builtin_filters()
    called = {spec.split("(")[0] for spec in SPECS.values()}
    assert called == set(FILTERS) == set(CASES)


@pytest.mark.download  # and Ray, from ray_runtime
def test_two_downloads_give_byte_identical_subsets_from_every_filter(tmp_path, ray_runtime):
    root = tmp_path / "pool"
    (root / "synthetic").mkdir(parents=True)
    with ShufflingServer(root / "synthetic") as server:
        generate_pool(root, PoolSpec(num_samples=SAMPLES, samples_per_file=SAMPLES // 2, image_size=48, seed=9,
                                     base_url=server.url, eval_samples=4, retrieval_samples=4, target_samples=24))
        names = sorted(p.name for p in (root / "synthetic" / "images").glob("*.jpg"))
        server.missing = set(names[::11])  # failed downloads: gaps in the keys
        workspaces = []
        for run_, (per_shard, processes, threads) in enumerate(((25, 1, 12), (40, 2, 5))):
            ws = Workspace.create(tmp_path / f"ws{run_}")
            if run_ == 0:
                shutil.copytree(root / "metadata", ws.metadata_dir, dirs_exist_ok=True)
            else:
                shuffled_metadata(root / "metadata", ws.metadata_dir, files=3)
            server.reshuffle(names, seed=run_)
            download(ws, download_config(per_shard, processes, threads), Runtime(executor="local"))
            workspaces.append(ws)
    model = f"poolsieve-tiny:{save_tiny_checkpoint(tmp_path / 'tiny.pt')}"
    for ws, batch in zip(workspaces, (16, 7), strict=True):
        score_pool(ws, ScoreConfig(models=[model], batch_size=batch, threads=1), Runtime(executor="local"), quiet=True)
        for name, folder in (("target", "target"), ("eval_tasks", "eval_images")):
            run(ws, ScoreConfig(models=[model], batch_size=4, threads=1, reference=str(root / "synthetic" / folder),
                                reference_name=name), Runtime(executor="local"))
    tables = [[p.name for p in ws.score_tables()] for ws in workspaces]
    assert len(tables[0]) != len(tables[1]), "both downloads cut the pool alike: only row order is tested"
    content = [pool_content(ws) for ws in workspaces]
    assert content[0] == content[1], "the two downloads do not hold the same numbers: nothing to compare"
    assert [list(c) for c in content][0] != [list(c) for c in content][1], "the same row order: nothing tested"
    cfg = FilterConfig(subsets=SPECS, memory_budget="64MiB")
    run_filter(workspaces[0], cfg, Runtime(executor="local"))
    run_filter(workspaces[1], cfg, ray_runtime)
    members = len(read_uidset(workspaces[0].root / "subsets" / "no_filter.npy"))
    differ = []
    for name in SPECS:
        first, second = (ws.root / "subsets" / f"{name}.npy" for ws in workspaces)
        if first.read_bytes() != second.read_bytes():
            differ.append(name)
        kept = len(read_uidset(first))
        assert kept == members if name == "no_filter" else 0 < kept < members, f"{name} kept {kept} of {members}"
    assert not differ, f"subsets that differ between the two downloads: {', '.join(differ)}"
