"""Filtering quality on the built-in pool: does each filter make a better model, and what does it remove?

DataComp's finding is that at the same compute a well-filtered subset trains a better CLIP than the raw
pool. This benchmark measures it on the built-in pool (``pipeline/demo/synthetic_pool.py``: labelled
defects, a shift toward off-task images, easy and hard examples, planted copies of evaluation images):

1. generate the pool, serve it on 127.0.0.1 and download it (img2dataset);
2. train two kinds of tiny CLIP scorer with the same budget, each ``--seeds`` times with scorer seeds
   0, 1, ...: ``seed`` on a curated clean seed set (the data-filtering-network idea) and ``raw`` on the
   raw pool (resharded first, so its data order follows the metadata, never the download); score the
   pool with all of them (columns ``seed0``, ``raw0``, ``seed1``, ...); embed the evaluation images
   (``eval_tasks``, for ``decontaminate``) and the image-based target (``target``) with each;
3. make every subset of the experiment file (``benchmarks/filter_quality.yaml``, a ``poolsieve run``
   experiment with ``${workspace}`` and ``${scorer}`` placeholders): a subset whose spec names
   ``${scorer}`` is made once per scorer seed (``NAME__s0``, ``NAME__s1``, ...) with the seed scorer
   and, for ``--raw-subsets``, again with the raw one (``NAME__raw__s0``, ...); the others once;
4. reshard, then train the tiny CLIP on each subset with the same number of samples seen, ``--seeds``
   runs per table row: run i trains with training seed i on the subset of scorer seed i; evaluate each
   run zero-shot on the built-in tasks (shape and colour classification, image-caption retrieval);
5. print DataComp's table (row, size, each task, the classification group, the average ± its std over
   runs, which differ in training seed and, in rows with a scorer, in scorer seed; the difference to
   no filtering in standard errors), and per row and labelled defect the share removed (removal
   recall), of clean samples kept, and removal precision (means over scorer seeds).

    python benchmarks/filter_quality.py --workspace /tmp/fq            # the full run (see README: Results)
    python benchmarks/filter_quality.py --workspace /tmp/fq --toy      # one seed, a tiny pool (minutes)

A rerun skips the stages, runs and evaluations already complete; two runs in two fresh workspaces give
the same figures (``tests/test_filter_quality.py``), also written to ``<workspace>/filter_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CONFIG = Path(__file__).with_name("filter_quality.yaml")
SCORERS = ("seed", "raw")
RAW_SUBSETS = ("clip30", "d2_pruning")  # a raw-pool scorer row for the top-30% and the D2 filter
RAW_POOL = "raw_pool"  # filtered/raw_pool/: the whole downloaded pool resharded, the raw scorers' data
BASELINE = "no_filter"
SCORER_SAMPLES_SEEN = 6144
CLASSIFICATION_TASKS = ("Synthetic shape", "Synthetic colour")
SPREAD = "std over runs; run i: training seed i and, in rows with a scorer, scorer seed i"
SAMPLES_SEEN: dict[str, int] = {}  # run -> samples its training saw (the trainer rounds the budget up)
TOY = {"num_samples": 400, "eval_samples": 60, "retrieval_samples": 40, "target_samples": 60,
       "samples_seen": 512, "scorer_samples_seen": 1024, "seed_samples": 400, "seeds": 1}


@dataclass(frozen=True)
class Row:
    """One row of the table: its runs train on ``subsets[i]`` with training seed i (the subset made with
    scorer seed i where the spec names a scorer, else the same subset for every run)."""

    name: str  # NAME (seed scorer or none) or NAME__raw
    base: str  # the experiment file's subset name
    scorer: str  # "seed", "raw" or "" (the spec names no scorer)
    subsets: tuple[str, ...]  # one per run


def scorer_key(scorer: str, seed: int) -> str:
    """The score column key of ``scorer`` trained with scorer seed ``seed`` (``seed0``, ``raw2``)."""
    return f"{scorer}{seed}"


# ----------------------------------------------------------------------------------- the config
def substitute(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every ``${name}`` in its strings replaced (recursively through lists and dicts)."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    return value


def mentions_scorer(spec: Any) -> bool:
    return "${scorer}" in json.dumps(spec)


def expand_subsets(specs: dict[str, Any], raw_subsets: list[str], scorer_seeds: int
                   ) -> tuple[dict[str, Row], dict[str, Any]]:
    """(table row name -> Row, subset name -> filter spec). A spec naming ``${scorer}`` is made once per
    scorer seed (``NAME__s{k}`` with ``seed{k}``) and, for ``raw_subsets``, once per raw scorer seed
    (``NAME__raw__s{k}`` with ``raw{k}``); any other spec once, under its own name."""
    rows: dict[str, Row] = {}
    made: dict[str, Any] = {}

    def add(row: str, base: str, scorer: str) -> None:
        if not scorer:
            made[row] = specs[base]
            rows[row] = Row(row, base, "", (row,) * scorer_seeds)
            return
        names = tuple(f"{row}__s{k}" for k in range(scorer_seeds))
        for k, name in enumerate(names):
            made[name] = substitute(specs[base], {"scorer": scorer_key(scorer, k)})
        rows[row] = Row(row, base, scorer, names)

    for name, spec in specs.items():
        add(name, name, "seed" if mentions_scorer(spec) else "")
    for name in raw_subsets:
        if name not in specs:
            raise SystemExit(f"--raw-subsets: {name!r} is not a subset of the experiment file")
        if mentions_scorer(specs[name]):
            add(f"{name}__raw", name, "raw")
    return rows, made


def load_config(path: Path, workspace: Path) -> dict[str, Any]:
    import yaml

    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or "filter" not in config:
        raise SystemExit(f"{path}: not an experiment file with a filter section")
    config = substitute(config, {"workspace": str(workspace)})
    config["workspace"] = str(workspace)
    return config


# ----------------------------------------------------------------------------------- the stages
def prepare_pool(ws: Any, config: dict[str, Any], runtime: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Generate (once) and download the built-in pool; return its generation spec."""
    from poolsieve.core.formats import read_json, write_json
    from poolsieve.pipeline.demo.image_server import ImageServer, free_port
    from poolsieve.pipeline.demo.synthetic_pool import PoolSpec, generate_pool
    from poolsieve.pipeline.experiment import run_experiment

    values = {**config.get("generate", {}), **{k: v for k, v in overrides.items() if v is not None}}
    info_path = ws.root / "synthetic" / "pool.json"
    if not (info_path.exists() and read_json(info_path).get("spec") == values):
        port = free_port()
        generate_pool(ws.root, PoolSpec(**values, base_url=f"http://127.0.0.1:{port}"))
        write_json(info_path, {"spec": values, "port": port})
    port = read_json(info_path)["port"]
    with ImageServer(ws.root / "synthetic", port=port):
        run_experiment(ws, {"download": config.get("download", {})}, runtime, only=["download"],
                       report_skipped=False)
    return values


def raw_pool_shards(ws: Any, runtime: Any, reshard_config: dict[str, Any]) -> Path:
    """The whole downloaded pool resharded into ``filtered/raw_pool/``: pool-shard, then key order (the
    metadata's row order), where the downloaded tars hold their samples in the order fetches finished."""
    import pandas as pd

    from poolsieve.core.formats import write_subset
    from poolsieve.core.uids import UidSet
    from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard

    uids = pd.concat([pd.read_parquet(f, columns=["uid"]) for f in ws.metadata_files()])["uid"]
    listing = ws.root / "synthetic" / f"{RAW_POOL}.npy"  # every uid of the metadata; reshard finds the downloaded
    write_subset(listing, UidSet.from_hex(uids.to_numpy()))
    reshard(ws, ReshardConfig(subset=str(listing), name=RAW_POOL, shard_size=reshard_config.get("shard_size", 1000)),
            runtime)
    return ws.filtered_dir(RAW_POOL)


def train_scorers(ws: Any, runtime: Any, seed_samples: int, samples_seen: int, scorer_seeds: int,
                  config: dict[str, Any]) -> dict[str, str]:
    """``seed{k}``: a tiny CLIP on a clean seed set; ``raw{k}``: the same on the raw pool; k the scorer
    (training) seed; torch threads as the train section's. Return key -> checkpoint."""
    from poolsieve.pipeline.demo.quickstart import ensure_seed_set
    from poolsieve.train.config import TrainConfig
    from poolsieve.train.trainer import train_clip

    sources = {"seed": ensure_seed_set(ws, seed_samples), "raw": raw_pool_shards(ws, runtime, config.get("reshard", {}))}
    threads = config.get("train", {}).get("threads")
    out = {}
    for k in range(scorer_seeds):
        for scorer, data in sources.items():
            key = scorer_key(scorer, k)
            run_dir = ws.run_dir(f"scorer_{key}")
            recipe = TrainConfig(scale="tiny", samples_seen=samples_seen, seed=k, threads=threads)
            summary = train_clip(data, run_dir, recipe, name=f"scorer_{key}")
            checkpoint = Path(summary["checkpoint"])
            out[key] = str(checkpoint if checkpoint.is_absolute() else run_dir / checkpoint)
    return out


def score_pool(ws: Any, runtime: Any, checkpoints: dict[str, str]) -> None:
    """Score the pool with every scorer; embed the evaluation images and the image-based target."""
    from poolsieve.pipeline.experiment import run_experiment
    from poolsieve.pipeline.score.references import embed_reference
    from poolsieve.pipeline.score.stage import ScoreConfig

    models = [{"arch": "poolsieve-tiny", "pretrained": ckpt, "key": key} for key, ckpt in checkpoints.items()]
    run_experiment(ws, {"score": {"models": models}}, runtime, only=["score"], report_skipped=False)
    config = ScoreConfig(models=models)
    embed_reference(ws, ws.root / "synthetic" / "eval_images", "eval_tasks", config, quiet=True)
    embed_reference(ws, ws.root / "synthetic" / "target", "target", config, quiet=True)


def make_subsets(ws: Any, runtime: Any, specs: dict[str, Any], train_names: list[str],
                 reshard: dict[str, Any]) -> None:
    """Filter every subset; reshard those that are trained."""
    from poolsieve.pipeline.experiment import run_experiment

    run_experiment(ws, {"filter": {"subsets": specs}}, runtime, only=["filter"], report_skipped=False)
    run_experiment(ws, {"filter": {"subsets": specs}, "reshard": {**reshard, "subsets": train_names}}, runtime,
                   only=["reshard"], report_skipped=False)


def train_and_evaluate(ws: Any, run: str, subset: str, seed: int, train: dict[str, Any],
                       evaluate: dict[str, Any]) -> dict:
    """Training run ``run`` on subset ``subset`` with training seed ``seed``, and its evaluation summary."""
    from poolsieve.core.models import ModelSpec
    from poolsieve.eval.cli import checkpoint_of_run
    from poolsieve.eval.evaluator import evaluate_model
    from poolsieve.pipeline.commands import stage as load_stage
    from poolsieve.train.trainer import train_clip

    config = load_stage("train").config_from({k: v for k, v in train.items() if k != "subsets"} | {"seed": seed})
    trained = train_clip(ws.filtered_dir(subset), ws.run_dir(run), config, name=run)
    SAMPLES_SEEN[run] = int(trained["samples_seen"])
    arch, checkpoint = checkpoint_of_run(ws.run_dir(run))
    eval_config = load_stage("evaluate").config_from({k: v for k, v in evaluate.items() if k != "subsets"})
    summary = evaluate_model(ModelSpec(arch, checkpoint), eval_config.tasks, ws.eval_dir(run), eval_config,
                             name=run, workspace=ws)
    return summary["tasks"]


# ----------------------------------------------------------------------------------- the figures
def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def quality_rows(results: dict[str, list[dict[str, float]]], sizes: dict[str, list[int]],
                 scorer_of: dict[str, str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Per row: size (mean over its subsets), mean per task over runs, the classification group, average
    ± std over runs, and the difference of the average to no filtering in standard errors of the
    difference. ``covers`` says what the runs of the row differ in."""
    tasks = list(dict.fromkeys(t for runs in results.values() for r in runs for t in r))
    rows = []
    for name, runs in results.items():
        own = sizes.get(name) or []
        row: dict[str, Any] = {"subset": name, "scorer": scorer_of.get(name, ""),
                               "size": float(np.mean(own)) if own else None, "sizes": own, "seeds": len(runs),
                               "covers": "scorer + training seed" if scorer_of.get(name) else "training seed"}
        for t in tasks:
            row[t] = float(np.mean([r[t] for r in runs if r.get(t) is not None]))
        classification = [t for t in tasks if t in CLASSIFICATION_TASKS]
        if classification:
            row["classification"] = float(np.mean([row[t] for t in classification]))
        averages = [float(np.mean([r[t] for t in tasks])) for r in runs]
        row["average"], row["std"] = mean_std(averages)
        row["averages"] = averages
        rows.append(row)
    base = next((r for r in rows if r["subset"] == BASELINE), None)
    for row in rows:
        row["vs_no_filter_se"] = float("nan")
        if base is not None and row is not base and row["seeds"] > 1 and base["seeds"] > 1:
            se = math.sqrt(row["std"] ** 2 / row["seeds"] + base["std"] ** 2 / base["seeds"])
            row["vs_no_filter_se"] = (row["average"] - base["average"]) / se if se > 0 else float("inf")
    return tasks, rows


def defect_rows(ws: Any, names: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Per subset and per label of the pool's members: how many there are, how many the subset removed."""
    import pandas as pd

    from poolsieve.core.formats import read_subset
    from poolsieve.core.uids import pairs_to_uids
    from poolsieve.pipeline.demo.synthetic_pool import CLEAN, LABEL_COLUMN

    meta = pd.concat([pd.read_parquet(f, columns=["uid", LABEL_COLUMN]) for f in ws.metadata_files()],
                     ignore_index=True).set_index("uid")[LABEL_COLUMN]
    members = set(pairs_to_uids(read_subset(ws.subset_path(BASELINE))))
    labels = meta[meta.index.isin(members)]
    kinds = sorted(set(labels), key=lambda k: (k == CLEAN, k))
    rows = []
    for name in names:
        kept = set(pairs_to_uids(read_subset(ws.subset_path(name))))
        removed = ~labels.index.isin(kept)
        row: dict[str, Any] = {"subset": name, "pool": len(labels), "kept": int((~removed).sum()),
                               "removed": int(removed.sum())}
        for kind in kinds:
            of_kind = (labels == kind).to_numpy()
            row[f"{kind}:count"] = int(of_kind.sum())
            row[f"{kind}:removed"] = int((of_kind & removed).sum())
        defective_removed = int((removed & (labels != CLEAN).to_numpy()).sum())
        row["precision"] = defective_removed / row["removed"] if row["removed"] else float("nan")
        rows.append(row)
    return kinds, rows


def mean_defect_rows(rows: dict[str, Row], per_subset: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per table row, the defect figures of its subsets averaged over scorer seeds (a row with one subset:
    that subset's figures)."""
    by_subset = {r["subset"]: r for r in per_subset}
    out = []
    for row in rows.values():
        figures = [by_subset[s] for s in dict.fromkeys(row.subsets)]
        merged: dict[str, Any] = {"subset": row.name, "subsets": len(figures)}
        for key, value in figures[0].items():
            if key != "subset":
                values = [f[key] for f in figures]
                merged[key] = value if len(set(values)) == 1 else float(np.mean(values))
        out.append(merged)
    return out


def format_quality(tasks: list[str], rows: list[dict[str, Any]]) -> str:
    from poolsieve.core.progress import format_table

    has_group = any("classification" in r for r in rows)
    header = ["subset", "scorer", "size", *tasks, *(["classification"] if has_group else []), "average", "± std",
              "± covers", "vs no_filter (SE)"]
    body = [[r["subset"], r["scorer"] or "-", r["size"], *[r[t] for t in tasks],
             *([r.get("classification", math.nan)] if has_group else []), r["average"], r["std"], r["covers"],
             r["vs_no_filter_se"]] for r in rows]
    return format_table(header, body)


def format_defects(kinds: list[str], rows: list[dict[str, Any]]) -> str:
    """Share of each defect removed (recall of removal), share of clean samples kept, removal precision."""
    from poolsieve.core.progress import format_table
    from poolsieve.pipeline.demo.synthetic_pool import CLEAN

    defects = [k for k in kinds if k != CLEAN]
    header = ["subset", "kept", "removal precision", "clean kept", *[f"{d} removed" for d in defects]]
    body = []
    for r in rows:
        clean = r[f"{CLEAN}:count"]
        body.append([r["subset"], r["kept"], r["precision"],
                     (clean - r[f"{CLEAN}:removed"]) / clean if clean else math.nan,
                     *[r[f"{d}:removed"] / r[f"{d}:count"] if r[f"{d}:count"] else math.nan for d in defects]])
    counts = "  ".join(f"{k}={rows[0][f'{k}:count']}" for k in kinds) if rows else ""
    return format_table(header, body) + f"\nlabels among the pool's {rows[0]['pool'] if rows else 0} " \
                                         f"downloaded samples: {counts}"


# ----------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, required=True, help="workspace folder (created)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment file (default: %(default)s)")
    p.add_argument("--seeds", type=int, help="runs per row (default 3): run i uses training seed i and scorer seed i")
    p.add_argument("--num-samples", type=int, help="pool size (default: the experiment file's)")
    p.add_argument("--samples-seen", type=int, help="training budget per run (default: the experiment file's)")
    p.add_argument("--eval-samples", type=int, help="images per classification task")
    p.add_argument("--seed-samples", type=int, help="clean pairs of the seed scorer's seed set (default: pool size)")
    p.add_argument("--scorer-samples-seen", type=int, help=f"scorers' training budget (default {SCORER_SAMPLES_SEEN})")
    p.add_argument("--subsets", help="comma list: train only these subsets (default: the train section's)")
    p.add_argument("--raw-subsets", default=",".join(RAW_SUBSETS),
                   help="subsets made again with the raw-pool scorer (default: %(default)s; empty: none)")
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="where stages run")
    p.add_argument("--toy", action="store_true", help="a tiny pool, one seed, a small budget (for tests)")
    p.add_argument("--json", type=Path, help="write the figures here too (default <workspace>/filter_quality.json)")
    return p.parse_args(argv)


def train_all(ws: Any, rows: dict[str, Row], train_rows: list[str], seeds: list[int], train: dict[str, Any],
              evaluate: dict[str, Any], t0: float) -> dict[str, list[dict[str, float]]]:
    """Every run of every trained row: run i of row R is ``R__s{i}``, on R's subset i, training seed i."""
    results: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:  # seed-major: an interrupted run has every row at the same number of runs
        for name in train_rows:
            results.setdefault(name, []).append(
                train_and_evaluate(ws, f"{name}__s{seed}", rows[name].subsets[seed], seed, train, evaluate))
            print(f"filter_quality: {name} run {seed} done ({time.monotonic() - t0:.0f} s)", flush=True)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    from poolsieve.core.runtime import Runtime
    from poolsieve.core.workspace import Workspace

    toy = TOY if args.toy else {}
    pick = lambda key, default=None: getattr(args, key, None) or toy.get(key, default)  # noqa: E731
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    workspace = args.workspace.resolve()
    ws = Workspace.create(workspace) if not workspace.exists() else Workspace.open(workspace)
    config = load_config(args.config, ws.root)
    runtime = Runtime(executor=args.executor)
    seeds = list(range(pick("seeds", 3)))

    overrides = {"num_samples": pick("num_samples"), "eval_samples": pick("eval_samples"),
                 "retrieval_samples": toy.get("retrieval_samples"), "target_samples": toy.get("target_samples")}
    pool = prepare_pool(ws, config, runtime, overrides)
    timings["generate + download"] = time.monotonic() - t0
    t = time.monotonic()
    seed_samples = pick("seed_samples") or pool.get("num_samples", 3000)
    checkpoints = train_scorers(ws, runtime, seed_samples, pick("scorer_samples_seen", SCORER_SAMPLES_SEEN),
                                len(seeds), config)
    timings["scorers"] = time.monotonic() - t
    t = time.monotonic()
    score_pool(ws, runtime, checkpoints)
    timings["score"] = time.monotonic() - t

    rows, specs = expand_subsets(config["filter"]["subsets"], [s for s in args.raw_subsets.split(",") if s],
                                 len(seeds))
    train = dict(config.get("train", {}))
    if pick("samples_seen"):
        train["samples_seen"] = pick("samples_seen")
    base_names = args.subsets.split(",") if args.subsets else list(train.get("subsets") or
                                                                   config["filter"]["subsets"])
    if BASELINE not in base_names:
        base_names.insert(0, BASELINE)
    train_rows = [name for name, row in rows.items() if row.base in base_names]
    t = time.monotonic()
    make_subsets(ws, runtime, specs, list(dict.fromkeys(s for n in train_rows for s in rows[n].subsets)),
                 config.get("reshard", {}))
    timings["filter + reshard"] = time.monotonic() - t

    evaluate = dict(config.get("evaluate", {}))
    if pick("eval_samples"):
        evaluate["synthetic_samples"] = pick("eval_samples")
    t = time.monotonic()
    results = train_all(ws, rows, train_rows, seeds, train, evaluate, t0)
    timings["train + evaluate"] = time.monotonic() - t

    count = {n: json.loads(ws.subset_info_path(n).read_text()).get("count") for n in specs}
    sizes = {name: [count[s] for s in dict.fromkeys(row.subsets)] for name, row in rows.items()}
    tasks, quality = quality_rows(results, sizes, {n: row.scorer for n, row in rows.items()})
    kinds, per_subset = defect_rows(ws, list(specs))
    timings["total"] = time.monotonic() - t0
    out = {"samples_seen": sorted(set(SAMPLES_SEEN.values())), "tasks": tasks, "spread": SPREAD,
           "quality": quality, "labels": kinds, "defects": mean_defect_rows(rows, per_subset),
           "defects_per_subset": per_subset, "timings": timings, "seeds": seeds, "scorer_seeds": seeds,
           "train": train, "pool": pool, "scorers": {k: ws.rel(v) for k, v in checkpoints.items()},
           "runs": {name: [f"{name}__s{i}: subset {rows[name].subsets[i]}, training seed {i}" for i in seeds]
                    for name in train_rows}}
    (args.json or ws.root / "filter_quality.json").write_text(json.dumps(out, indent=1, default=float))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run(args)
    print()
    seen = " or ".join(f"{n:,}" for n in out["samples_seen"])
    print(f"Zero-shot results of a tiny CLIP trained on each subset ({seen} samples seen, {len(out['seeds'])} "
          f"run(s) per row; mean over runs; ± is the {out['spread']}; size: mean over scorer seeds):")
    print(format_quality(out["tasks"], out["quality"]))
    print()
    print("What each subset removed, per labelled defect of the pool (share removed; clean: share kept; "
          "mean over scorer seeds):")
    print(format_defects(out["labels"], out["defects"]))
    print()
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in out["timings"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
