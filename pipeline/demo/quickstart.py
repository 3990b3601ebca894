"""``poolsieve quickstart``: the whole pipeline on the built-in pool, offline, in a few minutes on 2 cores.

generate a pool of coloured-shape pairs with labelled defects -> serve it on 127.0.0.1 and download it
with img2dataset -> train a tiny CLIP scorer on a separate clean seed set (`poolsieve train-scorer`; the
data-filtering-network idea: no pretrained weights exist offline) -> score the pool -> subsets: no
filter, DataComp's basic filter, CLIP score top 30% -> reshard each -> train a tiny CLIP on each with
the same number of samples seen -> zero-shot evaluation on held-out shape and colour tasks -> one table.

Rerunning resumes: every step skips what is already complete in the workspace.
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path
from typing import Any

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.formats import model_key, read_json, score_column, write_json
from poolsieve.core.progress import print_summary
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.demo.image_server import ImageServer, free_port
from poolsieve.pipeline.demo.seed_set import write_seed_set
from poolsieve.pipeline.demo.synthetic_pool import PoolSpec, generate_pool
from poolsieve.pipeline.download.stage import STAGE as DOWNLOAD
from poolsieve.pipeline.download.stage import DownloadConfig, download
from poolsieve.pipeline.experiment import comparison_table, run_experiment
from poolsieve.pipeline.train_scorer import ScorerConfig, train_scorer
from poolsieve.train.shards import count_samples, list_shards

SCORER = "scorer"
SCORER_SAMPLES_SEEN = 6144


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-samples", type=int, default=3000, help="pairs in the generated pool (default 3000)")
    p.add_argument("--seed-samples", type=int, default=3000, help="clean pairs to train the scorer on (default 3000)")
    p.add_argument("--samples-seen", type=int, help="training budget per subset (default: the tiny scale's)")
    p.add_argument("--clip-fraction", type=float, default=0.3, help="share kept by the CLIP-score filter (default 0.3)")
    p.add_argument("--eval-samples", type=int, default=600, help="images per synthetic evaluation task (default 600)")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ensure_pool(ws: Workspace, num_samples: int) -> dict[str, Any]:
    """Generate the built-in pool once; remember its image server address in ``synthetic/pool.json``."""
    info_path = ws.synthetic_dir / "pool.json"
    if info_path.exists() and any(ws.metadata_dir.glob("*.parquet")):
        info = read_json(info_path)
        if info.get("samples") == num_samples:
            return info

    port = free_port()
    summary = generate_pool(ws.root, PoolSpec(num_samples=num_samples, samples_per_file=1000, image_size=256,
                                              seed=0, base_url=f"http://127.0.0.1:{port}"))
    info = {"samples": num_samples, "port": port, "defects": summary["defects"]}
    write_json(info_path, info)
    return info


def ensure_seed_set(ws: Workspace, n: int, image_size: int = 64) -> Path:
    """Clean pairs (never part of the pool) as webdataset shards in ``<ws>/seed/``; written once."""
    folder = ws.quickstart_seed_dir
    if folder.is_dir() and any(folder.glob("*.tar")) and count_samples(list_shards(folder)) == n:
        return folder
    write_seed_set(folder, n, seed=1000, image_size=image_size)
    return folder


def experiment_config(scorer_checkpoint: str, clip_fraction: float, samples_seen: int | None,
                      eval_samples: int) -> dict[str, Any]:
    column = score_column(model_key("poolsieve-tiny", scorer_checkpoint))
    train: dict[str, Any] = {"scale": "tiny"}
    if samples_seen:
        train["samples_seen"] = samples_seen
    return {
        "score": {"models": [{"arch": "poolsieve-tiny", "pretrained": scorer_checkpoint}]},
        "filter": {"subsets": {
            "no_filter": "no_filter",
            "basic": "basic",
            f"clip{round(clip_fraction * 100)}": {"clip_score": {"column": column, "fraction": clip_fraction}},
        }},
        "reshard": {"shard_size": 1000},
        "train": train,
        "evaluate": {"tasks": "synthetic", "synthetic_samples": eval_samples},
    }


def run_quickstart(ws: Workspace, runtime: Any, args: argparse.Namespace, overwrite: bool = False) -> dict[str, Any]:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    pool = ensure_pool(ws, args.num_samples)
    timings["generate"] = time.monotonic() - t0

    t = time.monotonic()
    port = pool["port"] if _port_is_free(pool["port"]) else None
    if port is None:
        raise PoolsieveError(f"port {pool['port']} of the built-in pool's image server is busy; free it and rerun")
    with ImageServer(ws.synthetic_dir, port=port):
        DOWNLOAD.report(download(ws, DownloadConfig(image_size=64, samples_per_shard=500, processes=2, threads=16,
                                                    timeout=5.0, watchdog_seconds=300.0,
                                                    allow_networks=["127.0.0.1/32"]),  # our own server
                                 runtime, overwrite=overwrite))
    timings["download"] = time.monotonic() - t

    t = time.monotonic()
    seed = ensure_seed_set(ws, args.seed_samples)
    # `poolsieve train-scorer --seed WS/seed --samples-seen 6144 --random-seed 1`: half the tiny budget, as
    # colour, which tells mismatched captions apart, is learned long before that.
    scorer = train_scorer(ws, ScorerConfig(seed=str(seed), name=SCORER, samples_seen=SCORER_SAMPLES_SEEN, random_seed=1),
                          overwrite=overwrite)
    timings["train scorer"] = time.monotonic() - t

    config = experiment_config(scorer["checkpoint"], args.clip_fraction, args.samples_seen, args.eval_samples)
    write_json(ws.quickstart_config_path, config)
    stage_times: dict[str, float] = {}
    out: dict[str, Any] = {}
    for stage in ("score", "filter", "reshard", "train", "evaluate"):
        t = time.monotonic()
        out.update(run_experiment(ws, config, runtime, overwrite=overwrite, only=[stage], report_skipped=False))
        stage_times[stage] = time.monotonic() - t
    timings.update(stage_times)
    timings["total"] = time.monotonic() - t0
    return {"evaluate": out["evaluate"], "timings": timings, "table": comparison_table(ws, out["evaluate"]),
            "scorer": scorer}


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    ws = ctx.workspace(create=True)
    result = run_quickstart(ws, ctx.runtime, args, overwrite=ctx.overwrite)
    print()
    print("Zero-shot accuracy of a tiny CLIP trained on each subset (same number of samples seen):")
    print(result["table"])
    print()
    print_summary("quickstart", [
        ("workspace", ws.root),
        ("time", ", ".join(f"{k} {v:.0f}s" for k, v in result["timings"].items())),
        ("pool", f"{ws.metadata_dir}  (labels: {ws.labels_path})"),
        ("shards", ws.shards_dir),
        ("scores", ws.scores_dir),
        ("subsets", ws.subsets_dir),
        ("training runs", ws.runs_root),
        ("evaluations", ws.evals_root),
        ("inspect", f"poolsieve inspect --workspace {ws.root}"),
    ])
    return 0
