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

What is published is checked first. NAME follows the one name rule (``core/names.py``). Every line of the
evaluation's results files is checked (``eval/aggregate.py``); the evaluation folder is copied without
following a symlink (one is left out, with a warning line), so nothing outside the workspace is published
through one. The upload folder is written only from an evaluation of all 38 tasks, unless
``--allow-incomplete``; otherwise a warning names the missing tasks. ``--out`` replaces only a previous
submission (a folder holding ``submission.json``), never another folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.errors import ConfigError, InputError, PoolsieveError, PoolsieveWarning
from poolsieve.core.formats import DIR_MODE, read_json, write_json
from poolsieve.core.locks import exclusive
from poolsieve.core.names import check_name
from poolsieve.core.owned_folders import check_owned, replace_owned
from poolsieve.core.progress import print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.shown_text import for_terminal
from poolsieve.core.stage import Stage, option
from poolsieve.core.subsets import SubsetSnapshot, read_subset_snapshot
from poolsieve.core.uids import UidSet, keys_to_hex
from poolsieve.core.untrusted_files import open_no_follow
from poolsieve.core.workspace import Workspace
from poolsieve.eval.aggregate import RESULTS_FILE, aggregate, missing_tasks, read_eval_folder
from poolsieve.filters.no_filter import no_filter
from poolsieve.filters.pool_tables import pool_fingerprint, score_table_files
from poolsieve.filters.registry import ScoredPool
from poolsieve.train.scales import SCALES

RECORD = "submission.json"
MAX_DEPTH = 16  # folders inside the evaluation folder deeper than this are left out


@dataclass
class SubmitConfig:
    """The ``submit:`` section; each option is also a flag."""

    subset: str | None = option(None, "subset name (subsets/NAME.npy) or path to a .npy uid file")
    out: str | None = option(None, "submission folder (default: WORKSPACE/submissions/NAME); an existing "
                                   "folder is replaced only if it holds a previous submission")
    tables: str | None = option(None, "score tables that define the pool (default: WORKSPACE/scores)")
    evals: str | None = option(None, "evaluation folder to include (default: WORKSPACE/evals/NAME if present)")
    scale: str | None = option(None, "DataComp scale of the upload folder {scale}_scale/ (default: the run's)")
    allow_incomplete: bool = option(False, "write the upload folder {scale}_scale/ even from an evaluation that "
                                           "lacks some of DataComp's 38 tasks")


def subset_file(ws: Workspace, subset: str) -> tuple[str, Path]:
    """(the submission's name, the uid file): a ``.npy`` path is named after its file, else a subset name."""
    path = Path(subset).expanduser()
    if path.suffix == ".npy":
        return check_name(path.stem, "submission name (the .npy file's name)"), path
    return check_name(subset, "subset name"), ws.subset_path(subset)


def check_in_pool(uids: UidSet, pool: UidSet, path: Path) -> None:
    """InputError naming how many uids of the subset are not members of the pool, and the first one."""
    missing = ~pool.isin(uids.keys)
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise InputError(path, f"{int(missing.sum())} of {len(uids)} uids are not in the pool, e.g. row {first} "
                               f"({keys_to_hex(uids.keys[first:first + 1])[0]})")


def read_eval_results(folder: Path) -> dict[str, Any] | None:
    """``{"tasks": n, "averages": {group: score, ..., "Average": x or None, "incomplete": ...},
    "missing": [task keys]}``; every line checked, a results file that is a symlink refused."""
    results = read_eval_folder(folder, follow_symlinks=False)
    if not results:
        return None
    return {"tasks": len(results), "averages": aggregate(results), "folder": "eval",
            "missing": missing_tasks(results)}


def copy_without_links(src: Path, dst: Path, skipped: list[str], depth: int = 0) -> None:
    """``src`` copied into the new folder ``dst``: regular files and folders only. A symlink (to a file, a
    folder, or itself), a FIFO or a device is left out and named in ``skipped``; nothing is followed."""
    dst.mkdir()
    with os.scandir(src) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            skipped.append(f"{path} (a symlink)")
        elif entry.is_dir(follow_symlinks=False):
            if depth >= MAX_DEPTH:
                skipped.append(f"{path} (over {MAX_DEPTH} folders deep)")
            else:
                copy_without_links(path, dst / entry.name, skipped, depth + 1)
        elif not entry.is_file(follow_symlinks=False):
            skipped.append(f"{path} (not a regular file)")
        else:
            with os.fdopen(open_no_follow(path, os.O_RDONLY), "rb") as f, open(dst / entry.name, "wb") as out:
                shutil.copyfileobj(f, out)


def run_scale(ws: Workspace, name: str) -> str | None:
    """The scale of the training run ``runs/NAME`` (None when there is none)."""
    path = ws.run_dir(name) / "summary.json"
    return read_json(path).get("scale") if path.exists() else None


def upload_scale(ws: Workspace, cfg: SubmitConfig, name: str) -> str | None:
    """The scale of the upload folder: ``--scale`` or the run's, one of the scale table's names."""
    scale = cfg.scale or run_scale(ws, name)
    if scale is not None and scale not in SCALES:
        where = "--scale" if cfg.scale else str(ws.run_dir(name) / "summary.json")
        raise ConfigError(f"{where}: unknown scale {ascii(scale)[:60]}; one of {', '.join(SCALES)}")
    return scale


def write_datacomp_upload(staging: Path, name: str, uid_file: Path, results_file: Path, scale: str) -> str:
    """``{scale}_scale/results.jsonl`` and ``{scale}_scale/samples/NAME.npy``, as DataComp's evaluate.py
    names them in the hub commit it makes; returns the folder's name."""
    folder = staging / f"{scale}_scale"
    (folder / "samples").mkdir(parents=True)
    shutil.copyfile(results_file, folder / "results.jsonl")
    shutil.copyfile(uid_file, folder / "samples" / f"{name}.npy")
    return folder.name


def run_submit(ws: Workspace, cfg: SubmitConfig, runtime: Runtime, *, overwrite: bool = False) -> dict[str, Any]:
    """Validate the subset, write the submission folder, return its summary."""
    if not cfg.subset:
        raise ConfigError("which subset? pass --subset NAME (or a path to a .npy uid file)")
    name, path = subset_file(ws, cfg.subset)
    out = Path(cfg.out).expanduser() if cfg.out else ws.submission_dir(name)
    inside = None if cfg.out else ws.root
    check_owned(out, (RECORD,), inside=inside, what="submission folder")  # before any work
    # one read: dtype, 1-d, sorted (repeats allowed: upsampling); its record must describe it
    snapshot = read_subset_snapshot(path, allow_repeats=True)
    if len(snapshot.pairs) == 0:
        raise InputError(path, "subset is empty")
    tables = score_table_files(ws, cfg.tables)
    check_in_pool(UidSet.from_pairs(snapshot.pairs), no_filter(ScoredPool(tables, runtime)), path)
    with exclusive(out):
        check_owned(out, (RECORD,), inside=inside, what="submission folder")  # again, now that it is ours
        return _write_submission(ws, cfg, name, snapshot, out, tables, overwrite)


def _eval_folder(ws: Workspace, cfg: SubmitConfig, name: str) -> Path:
    """The evaluation folder to publish: ``--evals`` as given, else ``evals/NAME`` (not a symlink)."""
    if cfg.evals:
        return Path(cfg.evals).expanduser()
    folder = ws.eval_dir(name)
    if folder.is_symlink():
        raise InputError(folder, "is a symlink; submit publishes only the workspace's own evaluation folder "
                                 "(pass --evals FOLDER to name another)")
    return folder


def _write_submission(ws: Workspace, cfg: SubmitConfig, name: str, snapshot: SubsetSnapshot, out: Path,
                      tables: list[Path], overwrite: bool) -> dict[str, Any]:
    """The submission folder, from exactly the bytes that were checked (staged, then renamed into place)."""
    pairs, digest = snapshot.pairs, snapshot.sha256
    done = out / RECORD
    if done.exists() and not overwrite:
        previous = read_json(done)
        if previous.get("sha256") == digest:
            return {**previous, "status": "skipped (up to date)", "folder": str(out)}
        raise ConfigError(f"{out}: a submission of another uid file is there; pass --overwrite or --out")

    eval_dir = _eval_folder(ws, cfg, name)
    evals = read_eval_results(eval_dir) if eval_dir.is_dir() else None
    if cfg.evals and evals is None:
        raise InputError(eval_dir, "no eval_results.jsonl in this evaluation folder")
    scale = upload_scale(ws, cfg, name)
    upload, refused = _upload_decision(evals, eval_dir, scale, cfg.allow_incomplete)
    summary = {
        "name": name,
        "uid_file": f"{name}.npy",
        "sha256": digest,
        "count": int(len(pairs)),
        "distinct_uids": len(UidSet.from_pairs(pairs)),
        "bytes": len(snapshot.data),
        "pool": {"fingerprint": pool_fingerprint(tables), "tables": len(tables)},
        "spec": snapshot.record,
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
            skipped: list[str] = []
            copy_without_links(eval_dir, staging / "eval", skipped)
            for line in skipped:
                warnings.warn(f"{for_terminal(line)}: left out of the submission", PoolsieveWarning, stacklevel=2)
            if read_eval_folder(staging / "eval") != read_eval_folder(eval_dir, follow_symlinks=False):
                raise PoolsieveError(f"{eval_dir}: the evaluation changed while it was copied; rerun")
        if upload:
            write_datacomp_upload(staging, name, staging / f"{name}.npy", staging / "eval" / RESULTS_FILE, str(scale))
        write_json(staging / RECORD, summary)
        os.chmod(staging, DIR_MODE)  # mkdtemp makes 0700; files inside have the umask's mode
        replace_owned(staging, out, (RECORD,), inside=None if cfg.out else ws.root, what="submission folder")
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return {**summary, "status": "written", "folder": str(out), "upload_refused": refused}


def _upload_decision(evals: dict[str, Any] | None, eval_dir: Path, scale: str | None,
                     allow_incomplete: bool) -> tuple[bool, str | None]:
    """(write the upload folder?, why not when it could have been): an evaluation of all 38 tasks, or
    ``--allow-incomplete``; a warning names the missing tasks."""
    if evals is None or scale is None or not (eval_dir / RESULTS_FILE).is_file():
        return False, None
    missing = evals["missing"]
    if not missing or allow_incomplete:
        return True, None
    why = f"the evaluation lacks {len(missing)} of DataComp's 38 tasks ({', '.join(missing)})"
    warnings.warn(f"{eval_dir}: not writing DataComp's upload folder {scale}_scale/: {why}; evaluate them, or "
                  "pass --allow-incomplete to upload a partial result", PoolsieveWarning, stacklevel=2)
    return False, f"incomplete evaluation: {len(missing)} of 38 tasks missing (--allow-incomplete writes it)"


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
        ("DataComp upload", result.get("datacomp_upload") or result.get("upload_refused")
         or "none (needs eval_results.jsonl and a scale)"),
        ("folder", result["folder"]),
    ])


STAGE = Stage("submit", SubmitConfig, run=run_submit,
              report=print_report, reads=("subsets/", "scores/", "evals/", "runs/"), writes=("submissions/",))
