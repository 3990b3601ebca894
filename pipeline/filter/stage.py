"""Make uid subsets from the score tables: filters and their set algebra, seconds per try.

``poolsieve filter --spec SPEC`` writes ``subsets/{name}.npy`` (DataComp's format: sorted unique
``np.dtype("u8,u8")``) and ``subsets/{name}.json`` (the spec, its inputs, the pool's fingerprint, the
count after every step, the fastText model of any caption language it used (``language_record.py``),
the time). SPEC is a YAML file or inline mapping of subset names to specs,
``NAME = EXPRESSION`` or an expression (named by ``--name`` or after itself); without ``--spec``
the config's ``filter.subsets`` mapping is made. Examples::

    poolsieve filter -w pool --spec "clip30 = clip_score(column=clip_l14_similarity_score, fraction=0.3)"
    poolsieve filter -w pool --spec "basic_clip30 = basic & clip30"
    poolsieve filter -w pool --spec subsets.yaml
    poolsieve filter -w pool --tables /data/datacomp/metadata --spec basic      # DataComp metadata

Where the filters run: in this process unless Ray pays for itself. Ray is used when ``--ray-address``
names a cluster (already running: nothing to start), when this process already runs Ray (``run``
after ``score``), or when the files the filters read exceed ``--ray-above-mb`` (default 500 MB: the
score tables, plus the ``.npz`` embeddings when a filter of the spec takes an ``embedding``
parameter). Starting and stopping a local Ray costs seconds, which Ray's workers win back only on
several million rows of score table (the README has the figures: ``benchmarks/filter_speed.py``).
``--executor local`` always filters in this process; ``--ray-above-mb 0`` always uses Ray. The
subsets are the same either way.

A subset whose files exist with the same spec and pool is skipped; one with another spec or pool is
refused unless ``--overwrite``. The record names the sha256 of the ``.npy`` it describes and the two
change together (``core/subsets.py``): a pair that does not match, left by a run killed between its two
writes, is remade. One process at a time makes a given name (the writer's lock of ``subsets/NAME``).

A filter call or a subset that keeps under 10% of the pool is refused unless confirmed (``--allow-small``
or ``allow_small=true`` in the call: ``small_subsets.py``). ``--dry-run`` evaluates every spec the same
way in memory and prints what each keeps and what each step drops (``step_report.py``): no file, lock
or folder is written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import read_uidset
from poolsieve.core.names import check_name
from poolsieve.core.progress import format_table, print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.shown_text import for_terminal
from poolsieve.core.stage import Stage, option
from poolsieve.core.subsets import check_subset_record, write_subset_pair
from poolsieve.core.uids import UidSet
from poolsieve.core.workspace import Workspace
from poolsieve.filters._budget import parse_size
from poolsieve.filters.algebra import Evaluator, KeepsTooLittle, is_filter
from poolsieve.filters.pool_tables import pool_fingerprint, score_table_files
from poolsieve.filters.registry import ScoredPool, describe_filters, filter_parameters
from poolsieve.filters.spec import parse_cli_spec, parse_spec, render
from poolsieve.pipeline.filter.language_record import LanguageRecords
from poolsieve.pipeline.filter.small_subsets import check_subset_size, refusal
from poolsieve.pipeline.filter.step_report import print_dry_run, subset_notes

RAY_ABOVE_MB = 500.0


@dataclass
class FilterConfig:
    """The ``filter:`` section. ``--spec`` subsets are made in addition to (and named over) ``subsets``;
    given ``--spec``, only those are made."""

    subsets: dict[str, Any] = option({}, "subset name -> spec (YAML only)", cli=False)
    spec: list[str] | None = option(None, "YAML file, inline YAML mapping, 'NAME = EXPR' or an expression; repeatable",
                                    short="-s", metavar="SPEC")
    name: str | None = option(None, "subset name for a --spec that is one expression or one spec", short="-n")
    tables: str | None = option(None, "folder of score tables (default: WORKSPACE/scores); DataComp metadata works")
    only: list[str] | None = option(None, "names of the subsets to make (default: all)", cli=False)
    ray_above_mb: float = option(RAY_ABOVE_MB, "start a local Ray only when the files the filters read exceed "
                                 "this many MB (below, Ray's start-up costs more than it saves); 0: always")
    memory_budget: str | None = option(None, "memory the embedding filters' working set may take in any one process "
                                       "(e.g. 2GiB; default: a quarter of the machine's memory); larger work is "
                                       "cut to fit and spilled to a hidden folder of the workspace",
                                       metavar="SIZE")
    allow_small: bool = option(False, "write subsets and filter steps that keep under 10% of the pool (refused "
                               "without it; or say allow_small=true in a filter's call)")
    dry_run: bool = option(False, "evaluate every spec and print how many pairs each keeps and what each step "
                           "drops; write nothing")


def _saved_record(ws: Workspace, name: str) -> dict[str, Any] | None:
    """The record of a whole saved subset; ``None`` when there is none or the pair is incomplete (remade)."""
    npy, info = ws.subset_path(name), ws.subset_info_path(name)
    if not (npy.exists() and info.exists()):
        return None
    try:
        return check_subset_record(npy)
    except InputError:
        return None


def _incomplete(ws: Workspace, name: str) -> bool:
    """A ``.npy`` / ``.json`` pair that a killed run left half written (or only one of the two)."""
    return ws.subset_info_path(name).exists() and _saved_record(ws, name) is None


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def reads_embeddings(spec: Any) -> bool:
    """Whether a (parsed) spec calls a filter that reads the embeddings (one with an ``embedding`` parameter)."""
    if isinstance(spec, dict):
        name = spec.get("filter") or spec.get("ref")
        if isinstance(name, str) and is_filter(name):
            named, _ = filter_parameters(name)
            if any(p.name == "embedding" for p in named) or "embedding" in (spec.get("params") or {}):
                return True
        return any(reads_embeddings(v) for v in spec.values())
    if isinstance(spec, list):
        return any(reads_embeddings(v) for v in spec)
    return False


def filter_runtime(runtime: Runtime, tables: list[Path], embeddings: bool, ray_above_mb: float) -> Runtime:
    """The runtime the filters run on: ``runtime`` when it is in-process, joins a cluster, already runs, or
    the files to read (tables, plus embeddings when ``embeddings``) exceed ``ray_above_mb``; else in-process."""
    if runtime.executor == "local" or runtime.address or _ray_running():
        return runtime
    files = [*tables, *(t.with_suffix(".npz") for t in tables if embeddings)]
    size = sum(p.stat().st_size for p in files if p.exists())
    return runtime if size > ray_above_mb * 1e6 else Runtime(executor="local")


def with_cli_specs(cfg: FilterConfig) -> FilterConfig:
    """``cfg`` with its ``spec`` strings parsed into ``subsets`` (and ``only`` set to them)."""
    if cfg.name is not None:
        check_name(cfg.name, "subset name")  # before it is echoed or parsed
    if not cfg.spec:
        if cfg.name:
            raise ConfigError("--name names the subset of a --spec; pass --spec too")
        return cfg
    if len(cfg.spec) > 1 and cfg.name:
        raise ConfigError("--name names a single --spec; use 'NAME = EXPR' for several")
    given: dict[str, Any] = {}
    for text in cfg.spec:
        given.update(parse_cli_spec(text, cfg.name, is_filter))
    return replace(cfg, subsets={**cfg.subsets, **given}, only=list(given), spec=None, name=None)


def plan_subsets(ws: Workspace, cfg: FilterConfig) -> tuple[FilterConfig, list[str], list[Path], dict[str, Any]]:
    """(``cfg`` with its ``--spec`` strings parsed, the subsets to make, the score tables, every spec parsed)."""
    cfg = with_cli_specs(cfg)
    if not cfg.subsets:
        raise ConfigError("nothing to make: pass --spec or set 'filter: {subsets: {NAME: SPEC}}' in the config")
    for name in [*cfg.subsets, *(cfg.only or [])]:  # file names in subsets/: the one name rule, before anything
        check_name(name, "subset name")
    targets = list(cfg.only or cfg.subsets)
    unknown = [t for t in targets if t not in cfg.subsets]
    if unknown:
        raise ConfigError(f"no spec for subset(s) {', '.join(unknown)}")
    tables = score_table_files(ws, cfg.tables)
    parsed = {name: parse_spec(spec, name) for name, spec in cfg.subsets.items()}
    return cfg, targets, tables, parsed


def run_filter(ws: Workspace, cfg: FilterConfig, runtime: Runtime, *, overwrite: bool = False) -> dict[str, Any]:
    """Make every subset of ``cfg`` (or ``cfg.only``); return ``{name: {count, status, seconds, ...}}``.

    Each target's name is locked for the run: a second filter making the same name fails in one line.
    """
    if cfg.dry_run:
        return dry_run_subsets(ws, cfg, runtime)
    cfg, targets, tables, parsed = plan_subsets(ws, cfg)
    fingerprint = pool_fingerprint(tables)
    with contextlib.ExitStack() as locks:
        for name in sorted(targets):
            locks.enter_context(ws.lock(f"subsets/{name}"))
        return _make_subsets(ws, cfg, runtime, overwrite, targets, tables, fingerprint, parsed)


def _make_subsets(ws: Workspace, cfg: FilterConfig, runtime: Runtime, overwrite: bool, targets: list[str],
                  tables: list[Path], fingerprint: str, parsed: dict[str, Any]) -> dict[str, Any]:
    made: set[str] = set()

    def up_to_date(name: str) -> bool:
        saved = _saved_record(ws, name)
        return (saved is not None and not (overwrite and name in targets and name not in made)
                and saved.get("spec") == evaluator.resolve(parsed[name], within=name)
                and saved.get("pool", {}).get("fingerprint") == fingerprint and languages.matches(saved, name))

    def load_defined(name: str) -> UidSet | None:
        return read_uidset(ws.subset_path(name)) if up_to_date(name) else None

    evaluator = spec_evaluator(ws, cfg, tables, parsed, runtime, load_defined,
                               small="warn" if cfg.allow_small else "refuse")
    pool = evaluator.pool
    languages = LanguageRecords(tables, parsed, evaluator.resolve)  # which fastText model each subset's language is
    results: dict[str, Any] = {}
    for name in targets:
        resolved = evaluator.resolve(parsed[name], within=name)
        saved = _saved_record(ws, name)
        if saved is not None and not overwrite:
            if up_to_date(name):
                results[name] = {"status": "skipped (up to date)", "count": saved.get("count"), "seconds": 0.0,
                                 "path": str(ws.subset_path(name))}
                continue
            why = (f"another spec ({saved.get('expression')})" if saved.get("spec") != resolved else
                   "another language model" if saved.get("pool", {}).get("fingerprint") == fingerprint else "another pool")
            raise ConfigError(f"{ws.subset_path(name)}: subset '{name}' exists, made from {why}; "
                              "pass --overwrite to replace it or choose another name")
        status = "remade (was incomplete)" if _incomplete(ws, name) else "made"
        start = time.perf_counter()
        first_step, first_input = len(evaluator.steps), len(evaluator.inputs)
        try:
            uids = evaluator.evaluate_defined(name)
        except KeepsTooLittle as e:
            raise ConfigError(refusal(name, str(e))) from None
        members = pool.member_count()
        check_subset_size(name, resolved, len(uids), members, evaluator.steps[first_step:], cfg.allow_small,
                          render(resolved))
        seconds = time.perf_counter() - start
        record = {
            "name": name,
            "expression": render(resolved),
            "spec": resolved,
            "given": cfg.subsets[name],
            "count": len(uids),
            "pool": {"fingerprint": fingerprint, "members": members, "tables": len(tables),
                     "table_folder": ws.rel(tables[0].parent) if tables else None},
            "fraction_of_pool": round(len(uids) / members, 6) if members else 0.0,
            "inputs": [dict(i, path=ws.rel(i["path"])) if "path" in i else i  # relative: the workspace can move
                       for i in evaluator.inputs[first_input:]],
            "steps": evaluator.steps[first_step:],
            "language_model": languages.of(name),
            "seconds": round(seconds, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_subset_pair(ws.subset_path(name), uids, record)  # the one conversion to DataComp's pairs
        made.add(name)
        results[name] = {"status": status, "count": len(uids), "members": members, "seconds": round(seconds, 3),
                         "expression": record["expression"], "path": str(ws.subset_path(name)),
                         "notes": subset_notes(record["steps"])}
    return results


def spec_evaluator(ws: Workspace, cfg: FilterConfig, tables: list[Path], parsed: dict[str, Any], runtime: Runtime,
                   load_defined: Callable[[str], UidSet | None] | None = None, small: str = "warn") -> Any:
    """The ``Evaluator`` the subsets are made with: the pool's tables on the runtime the filters run on;
    saved subsets read only when their record describes them; ``small``: the policy for a filter call
    that keeps little (``filters/algebra.py``)."""
    embeddings = any(reads_embeddings(spec) for spec in parsed.values())
    pool = ScoredPool(tables, filter_runtime(runtime, tables, embeddings, cfg.ray_above_mb),
                      memory_budget=parse_size(cfg.memory_budget), spill_dir=ws.root)
    checked: dict[tuple[int, int, int], None] = {}

    def saved_subset_file(name: str) -> Path:
        """``subsets/NAME.npy`` as an input; refused in one line if its record does not describe it."""
        path = ws.subset_path(name)
        if path.exists():
            st = path.stat()
            if (st.st_ino, st.st_size, st.st_mtime_ns) not in checked:
                check_subset_record(path)
                checked[(st.st_ino, st.st_size, st.st_mtime_ns)] = None
        return path

    return Evaluator(pool, parsed, subset_file=saved_subset_file, load_defined=load_defined, small=small)


def evaluate_subsets(ws: Workspace, cfg: FilterConfig, runtime: Runtime, *, small: str = "warn",
                     trace: dict[str, Any] | None = None) -> dict[str, UidSet]:
    """The subsets ``run_filter`` would make from ``cfg``, as uid sets in memory: the same specs, tables and
    evaluator, nothing written or locked (every subset defined in ``cfg`` is evaluated afresh). ``small``: the
    policy for a filter call that keeps little (``filters/algebra.py``); ``trace`` receives, per subset, its
    resolved spec, its steps, the pool's members and the seconds it took (what a dry run prints)."""
    cfg, targets, tables, parsed = plan_subsets(ws, cfg)
    evaluator = spec_evaluator(ws, cfg, tables, parsed, runtime, small=small)
    out: dict[str, UidSet] = {}
    for name in targets:
        start, first_step = time.perf_counter(), len(evaluator.steps)
        out[name] = evaluator.evaluate_defined(name)
        if trace is not None:
            trace[name] = {"resolved": evaluator.resolve(parsed[name], within=name),
                           "steps": evaluator.steps[first_step:], "members": evaluator.pool.member_count(),
                           "seconds": round(time.perf_counter() - start, 3)}
    return out


def dry_run_subsets(ws: Workspace, cfg: FilterConfig, runtime: Runtime) -> dict[str, Any]:
    """``--dry-run``: every subset ``run_filter`` would make, evaluated in memory by ``evaluate_subsets`` (nothing
    written or locked); per subset its count, its steps and why it would be refused, if it would."""
    trace: dict[str, Any] = {}
    made = evaluate_subsets(ws, cfg, runtime, small="record", trace=trace)
    results: dict[str, Any] = {}
    for name, uids in made.items():
        resolved, steps, members = trace[name]["resolved"], trace[name]["steps"], trace[name]["members"]
        small = None if cfg.allow_small else next((d["warning"] for d in (s.get("details") or {} for s in steps)
                                                   if d.get("warning") and not d.get("allow_small")), None)
        refused = refusal(name, small) if small else None
        try:
            check_subset_size(name, resolved, len(uids), members, steps, cfg.allow_small, render(resolved))
        except ConfigError as e:
            refused = refused or str(e)
        results[name] = {"dry_run": True, "count": len(uids), "members": members, "expression": render(resolved),
                         "steps": steps, "refused": refused, "seconds": trace[name]["seconds"]}
    return results


EXAMPLES = """examples:
  poolsieve filter -w pool --spec "clip30 = clip_score(column=clip_l14_similarity_score, fraction=0.3)"
  poolsieve filter -w pool --spec "basic_clip30 = basic & clip30"
  poolsieve filter -w pool --spec "{en: basic, rest: {not: en}}"
  poolsieve filter -w pool --spec subsets.yaml
  poolsieve filter -w pool --tables /data/datacomp/metadata --spec basic

operators: & (and), | (or), ~ (not: the pool minus it), parentheses; filter(key=value, ...)
a bare name is a subset defined in the same spec, a filter, or subsets/NAME.npy"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI-only: the examples and ``--list-filters`` (every other flag comes from ``FilterConfig``)."""
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--list-filters", action="store_true",
                   help="list the registered filters with their parameters and defaults, and exit")


def cli_action(ctx: Any, args: argparse.Namespace) -> int | None:
    """``--list-filters`` needs no workspace and ends the command; otherwise the stage runs."""
    if args.list_filters:
        print(describe_filters())
        return 0
    return None


def print_report(results: dict[str, Any]) -> None:
    """The one-screen summary of a filter run: one row per subset, then the filters' notes (a dry run:
    ``step_report.print_dry_run``)."""
    if any(r.get("dry_run") for r in results.values()):
        print_dry_run(results)
        return
    rows = [(name, r["status"], r["count"] if r["count"] is not None else "?",
             f"{100 * r['count'] / r['members']:.2f}%" if r.get("members") else "", f"{r['seconds']:.2f}")
            for name, r in results.items()]
    print(format_table(["subset", "status", "uids", "of pool", "seconds"], rows))
    for name, r in results.items():
        for note in r.get("notes") or []:
            print(f"  {name}: {for_terminal(note)}")
    folder = next((str(Path(r["path"]).parent) for r in results.values() if r.get("path")), "subsets/")
    print_summary("filter", [("subsets", len(results)), ("folder", folder),
                             ("time", f"{sum(r['seconds'] for r in results.values()):.2f} s")])


STAGE = Stage("filter", FilterConfig,
              run=run_filter, report=print_report, reads=("scores/", "subsets/"), writes=("subsets/",))
