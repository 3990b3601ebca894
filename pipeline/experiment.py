"""``poolsieve run --config experiment.yaml``: one whole experiment from one file.

The stages run in pipeline order, each one only if its section is present; every stage skips the
units it already finished, so rerunning a killed experiment resumes it.

```yaml
workspace: ./pool
download: {processes: 8, threads: 64}            # metadata/ -> shards/
score: {models: ["ViT-B-32:openai"]}             # shards/ -> scores/
filter:                                          # scores/ -> subsets/
  subsets:
    no_filter: no_filter
    basic: basic
    clip30: {clip_score: {fraction: 0.3}}
reshard: {shard_size: 10000}                     # every subset (or `subsets: [...]`) -> filtered/
train: {scale: small}                            # filtered/NAME -> runs/NAME
evaluate: {tasks: datacomp38}                    # runs/NAME -> evals/NAME
```

It ends with one table: subset, size, the main metric per task and the average.

``filter: {allow_small: true}`` lets a subset keep under 10% of the pool (``poolsieve filter
--allow-small``). ``poolsieve run --dry-run`` evaluates the filter section's subsets on the scored pool and
prints what each keeps and what each step drops, running no other stage and writing nothing (as
``filter: {dry_run: true}``, after which no later stage runs).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from poolsieve.core.config import section
from poolsieve.core.errors import ConfigError
from poolsieve.core.progress import format_table, print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import commands
from poolsieve.pipeline.commands import RUN_STAGES

STAGES = RUN_STAGES  # the sections an experiment may have, in pipeline order
TOP_LEVEL_KEYS = {"workspace", "ray_address", "executor", *STAGES}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", help=f"comma list of stages to run (default: every section present: {', '.join(STAGES)})")
    p.add_argument("--dry-run", action="store_true",
                   help="evaluate the filter section's subsets on the scored pool and print what each keeps and what "
                        "each step drops; run no other stage and write nothing")


def check_experiment(config: dict[str, Any], extra_keys: set[str] = frozenset()) -> None:
    unknown = sorted(set(config) - TOP_LEVEL_KEYS - set(extra_keys))
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {', '.join(unknown)}; known: {', '.join(sorted(TOP_LEVEL_KEYS))}")


def _subset_names(config: dict[str, Any], ws: Workspace, stage: str) -> list[str]:
    """Subsets a per-subset stage works on: its own ``subsets:`` list, else the filter section's, else all files."""
    listed = section(config, stage).get("subsets")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
            raise ConfigError(f"config section '{stage}': subsets must be a list of subset names")
        return listed
    defined = section(config, "filter").get("subsets")
    if defined:
        return list(defined)
    return sorted(p.stem for p in ws.subsets_dir.glob("*.npy")) if ws.subsets_dir.is_dir() else []


def _without_subsets(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != "subsets"}


def skipped_line(name: str, config: dict[str, Any], only: list[str] | None) -> str:
    """The one line a stage that does not run prints, saying why."""
    if only is not None:
        return f"{name}: skipped (not in --only {','.join(only)})"
    return f"{name}: skipped (the config has no '{name}:' section)"


def run_experiment(ws: Workspace, config: dict[str, Any], runtime: Runtime, *, overwrite: bool = False,
                   only: list[str] | None = None, report_skipped: bool = True) -> dict[str, Any]:
    """Run the stages whose sections ``config`` has (or ``only`` these); return per-stage summaries.

    Each stage gets its section as its config; a per-subset stage (reshard, train, evaluate) runs once
    per subset with ``subset`` set, in pipeline order. Every stage prints its one-screen summary as it
    ends; a stage that does not run prints one line saying why (unless ``report_skipped`` is false).
    """
    check_experiment(config, {"generate"})
    stages = [s for s in STAGES if s in config] if only is None else list(only)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {', '.join(bad)}; stages: {', '.join(STAGES)}")
    if "train" in stages:  # a budget that cannot be trained exactly is refused before any stage runs
        commands.stage("train").config_from(_without_subsets(section(config, "train"))).recipe()
    out: dict[str, Any] = {}
    dry = False
    for name in STAGES:
        if name not in stages or dry:
            if report_skipped:
                print(f"{name}: skipped (the filter stage was a dry run)" if dry else skipped_line(name, config, only))
            continue
        stage = commands.stage(name)
        values = section(config, name)
        dry = name == "filter" and bool(values.get("dry_run"))
        if stage.per_subset:
            base = _without_subsets(values)
            out[name] = {}
            subsets = _subset_names(config, ws, name)
            if not subsets:
                print(f"{name}: skipped (no subsets: none in subsets/ and none listed in the config)")
            for subset in subsets:
                summary = stage.run(ws, stage.config_from({**base, "subset": subset}), runtime, overwrite=overwrite)
                out[name][subset] = summary
                if stage.report is not None:
                    stage.report(summary)
        else:
            out[name] = stage.run(ws, stage.config_from(values), runtime, overwrite=overwrite)
            if stage.report is not None:
                stage.report(out[name])
    return out


def comparison_table(ws: Workspace, evaluations: dict[str, dict[str, Any]]) -> str:
    """Subset, size, the main metric per task, the average: one row per evaluated subset."""
    tasks = list(dict.fromkeys(t for s in evaluations.values() for t in s["tasks"]))
    rows = []
    for name, summary in evaluations.items():
        info_path = ws.subset_info_path(name)
        size = json.loads(info_path.read_text()).get("count") if info_path.exists() else None
        values = [summary["tasks"].get(t) for t in tasks]
        known = [v for v in values if v is not None]
        average = sum(known) / len(known) if known else math.nan
        rows.append([name, size if size is not None else "?", *[math.nan if v is None else float(v) for v in values],
                     average])
    return format_table(["subset", "size", *tasks, "average"], rows)


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    if not ctx.config:
        raise ConfigError("poolsieve run needs --config FILE (a YAML experiment: see `poolsieve run --help`)")
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    config = ctx.config
    if args.dry_run:
        if "filter" not in config or only not in (None, ["filter"]):
            raise ConfigError("--dry-run evaluates the config's 'filter:' section alone"
                              + ("; it has none" if "filter" not in config else "; leave out --only"))
        config, only = {**config, "filter": {**section(config, "filter"), "dry_run": True}}, ["filter"]
    ws = ctx.workspace(create="download" in config and not args.dry_run)
    out = run_experiment(ws, config, ctx.runtime, overwrite=ctx.overwrite, only=only, report_skipped=not args.dry_run)
    if "evaluate" in out:
        print(comparison_table(ws, out["evaluate"]))
    print_summary("run", [("workspace", ws.root), ("stages", ", ".join(out) or "none")])
    return 0
