"""Validate a subset and write a DataComp submission folder.

``poolsieve submit -w pool --subset NAME`` checks ``subsets/NAME.npy`` (or any ``.npy`` path): dtype
``np.dtype("u8,u8")``, one-dimensional, sorted, every uid a member of the pool. A uid may repeat (DataComp's
format allows upsampling: a repeated uid is trained on as often as it appears); the summary counts the
rows and the distinct uids. It then
writes ``submissions/NAME/`` with the uid file, ``NAME.npy.sha256``, ``submission.json`` (sha256,
size, pool fingerprint, the spec record from ``subsets/NAME.json``) and, when ``evals/NAME/`` holds
results, a copy of them with their average, and beside them the folder DataComp's ``evaluate.py``
uploads to the hub: ``{scale}_scale/results.jsonl`` (the evaluation's ``eval_results.jsonl``) and
``{scale}_scale/samples/NAME.npy`` (the uid file). The scale is ``--scale`` or the training run's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import DIR_MODE, read_json, write_json
from poolsieve.core.locks import exclusive
from poolsieve.core.progress import print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage, option
from poolsieve.core.subsets import SubsetSnapshot, read_subset_snapshot
from poolsieve.core.uids import UidSet, keys_to_hex
from poolsieve.core.workspace import Workspace
from poolsieve.eval.aggregate import RESULTS_FILE, aggregate, read_eval_folder
from poolsieve.filters.no_filter import no_filter
from poolsieve.filters.pool_tables import pool_fingerprint, score_table_files
from poolsieve.filters.registry import ScoredPool


@dataclass
class SubmitConfig:
    """The ``submit:`` section; each option is also a flag."""

    subset: str | None = option(None, "subset name (subsets/NAME.npy) or path to a .npy uid file")
    out: str | None = option(None, "submission folder (default: WORKSPACE/submissions/NAME)")
    tables: str | None = option(None, "score tables that define the pool (default: WORKSPACE/scores)")
    evals: str | None = option(None, "evaluation folder to include (default: WORKSPACE/evals/NAME if present)")
    scale: str | None = option(None, "DataComp scale of the upload folder {scale}_scale/ (default: the run's)")


def subset_file(ws: Workspace, subset: str) -> tuple[str, Path]:
    path = Path(subset).expanduser()
    if path.suffix == ".npy":
        return path.stem, path
    return subset, ws.subset_path(subset)


def check_in_pool(uids: UidSet, pool: UidSet, path: Path) -> None:
    """InputError naming how many uids of the subset are not members of the pool, and the first one."""
    missing = ~pool.isin(uids.keys)
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise InputError(path, f"{int(missing.sum())} of {len(uids)} uids are not in the pool, e.g. row {first} "
                               f"({keys_to_hex(uids.keys[first:first + 1])[0]})")


def read_eval_results(folder: Path) -> dict[str, Any] | None:
    """``{"tasks": n, "averages": {group: score, ..., "Average": x or None, "incomplete": ...}}``."""
    results = read_eval_folder(folder)
    if not results:
        return None
    return {"tasks": len(results), "averages": aggregate(results), "folder": "eval"}


def run_scale(ws: Workspace, name: str) -> str | None:
    """The scale of the training run ``runs/NAME`` (None when there is none)."""
    path = ws.run_dir(name) / "summary.json"
    return read_json(path).get("scale") if path.exists() else None


def write_datacomp_upload(staging: Path, name: str, uid_file: Path, eval_dir: Path, scale: str) -> str:
    """``{scale}_scale/results.jsonl`` and ``{scale}_scale/samples/NAME.npy``, as DataComp's evaluate.py
    names them in the hub commit it makes; returns the folder's name."""
    folder = staging / f"{scale}_scale"
    (folder / "samples").mkdir(parents=True)
    shutil.copyfile(eval_dir / RESULTS_FILE, folder / "results.jsonl")
    shutil.copyfile(uid_file, folder / "samples" / f"{name}.npy")
    return folder.name


def run_submit(ws: Workspace, cfg: SubmitConfig, runtime: Runtime, *, overwrite: bool = False) -> dict[str, Any]:
    """Validate the subset, write the submission folder, return its summary."""
    if not cfg.subset:
        raise ConfigError("which subset? pass --subset NAME (or a path to a .npy uid file)")
    name, path = subset_file(ws, cfg.subset)
    # one read: dtype, 1-d, sorted (repeats allowed: upsampling); its record must describe it
    snapshot = read_subset_snapshot(path, allow_repeats=True)
    pairs = snapshot.pairs
    if len(pairs) == 0:
        raise InputError(path, "subset is empty")
    tables = score_table_files(ws, cfg.tables)
    check_in_pool(UidSet.from_pairs(pairs), no_filter(ScoredPool(tables, runtime)), path)
    out = Path(cfg.out).expanduser() if cfg.out else ws.submission_dir(name)
    with exclusive(out):
        return _write_submission(ws, cfg, name, snapshot, out, tables, overwrite)


def _write_submission(ws: Workspace, cfg: SubmitConfig, name: str, snapshot: SubsetSnapshot, out: Path,
                      tables: list[Path], overwrite: bool) -> dict[str, Any]:
    """The submission folder, from exactly the bytes that were checked (staged, then renamed into place)."""
    pairs, digest = snapshot.pairs, snapshot.sha256
    done = out / "submission.json"
    if done.exists() and not overwrite:
        previous = read_json(done)
        if previous.get("sha256") == digest:
            return {**previous, "status": "skipped (up to date)", "folder": str(out)}
        raise ConfigError(f"{out}: a submission of another uid file is there; pass --overwrite or --out")

    spec = snapshot.record
    eval_dir = Path(cfg.evals).expanduser() if cfg.evals else ws.eval_dir(name)
    evals = read_eval_results(eval_dir) if eval_dir.is_dir() else None
    if cfg.evals and evals is None:
        raise InputError(eval_dir, "no eval_results.jsonl in this evaluation folder")

    scale = cfg.scale or run_scale(ws, name)
    upload = evals is not None and (eval_dir / RESULTS_FILE).exists() and scale is not None
    summary = {
        "name": name,
        "uid_file": f"{name}.npy",
        "sha256": digest,
        "count": int(len(pairs)),
        "distinct_uids": len(UidSet.from_pairs(pairs)),
        "bytes": len(snapshot.data),
        "pool": {"fingerprint": pool_fingerprint(tables), "tables": len(tables)},
        "spec": spec,
        "evaluation": evals,
        "datacomp_upload": f"{scale}_scale" if upload else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        snapshot.write_copy(staging / f"{name}.npy")
        (staging / f"{name}.npy.sha256").write_text(f"{digest}  {name}.npy\n")
        if evals is not None:
            shutil.copytree(eval_dir, staging / "eval")
        if upload:
            write_datacomp_upload(staging, name, staging / f"{name}.npy", eval_dir, str(scale))
        write_json(staging / "submission.json", summary)
        os.chmod(staging, DIR_MODE)  # mkdtemp makes 0700; files inside have the umask's mode
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return {**summary, "status": "written", "folder": str(out)}


def print_report(result: dict[str, Any]) -> None:
    """The one-screen summary of a submission."""
    evals = result.get("evaluation")
    print_summary("submit", [
        ("subset", result["name"]),
        ("status", result["status"]),
        ("uids", f"{result['count']:,}" + (f" ({result['distinct_uids']:,} distinct: some repeat)"
                                           if result.get("distinct_uids", result["count"]) != result["count"] else "")),
        ("sha256", result["sha256"]),
        ("evaluation", f"{evals['tasks']} tasks, " + (f"average {evals['averages']['Average']:.4f}"
                        if evals["averages"].get("Average") is not None else str(evals["averages"].get("incomplete")))
         if evals else "none"),
        ("DataComp upload", result.get("datacomp_upload") or "none (needs eval_results.jsonl and a scale)"),
        ("folder", result["folder"]),
    ])


STAGE = Stage("submit", SubmitConfig, run=run_submit,
              report=print_report, reads=("subsets/", "scores/", "evals/", "runs/"), writes=("submissions/",))
