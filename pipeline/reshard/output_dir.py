"""The output folder ``filtered/{name}/``: which files are reshard's, and when a run may take the folder.

Reshard writes only the names below (and their temporaries, ``atomic_path``'s ``.{name}.XXXXXXXX.tmp``),
and only ever removes regular files of those names: a user's own file beside them is kept. A folder
counts as a reshard's when it holds reshard's record (``.reshard_plan.json``, written first, or a
``meta.json`` by "poolsieve reshard"); files with reshard's names in a folder without one are not
reshard's, and no run (``--overwrite`` included) removes them: it stops in one line instead. Records
are read as untrusted files (regular files only, bounded, any damage means "no record").
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from poolsieve.core.errors import InputError
from poolsieve.core.formats import filtered_shard_name
from poolsieve.core.untrusted_files import open_regular
from poolsieve.core.workspace import is_whole_shard

OUTPUT_SHARD_FORMAT = "{:08d}.tar"
OUTPUT_STATS_FORMAT = "{:08d}_stats.json"
SUBSET_COPY_NAME = "sample_ids.npy"
MISSING_NAME = "missing_uids.npy"
PLAN_NAME = ".reshard_plan.json"
KEYS_NAME = ".sample_keys.npy"  # the subset as sorted 16-byte keys, for the scans' lookups (removed at the end)
META_NAME = "meta.json"
TOOL = "poolsieve reshard"
_RECORD_LIMIT = 64 << 20
_FINAL = (r"\d{8}(?:\.tar|_stats\.json)|meta\.json|sample_ids\.npy|missing_uids\.npy|\.reshard_plan\.json"
          r"|\.sample_keys\.npy")
_OUTPUT_RE = re.compile(rf"(?:{_FINAL})|\.(?:{_FINAL})\.[a-z0-9_]{{8}}\.tmp")


def is_output_file(name: str) -> bool:
    """A name reshard writes: a shard, its stats, the records, or the temporary of one of them."""
    return _OUTPUT_RE.fullmatch(name) is not None


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record reshard wrote, or None when it is missing, not a regular file, too large or damaged."""
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > _RECORD_LIMIT:
                return None
            doc = json.loads(f.read())
    except (InputError, OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _ours(out_dir: Path) -> list[Path]:
    """Entries of ``out_dir`` with reshard's names; one that is not a regular file is refused in one line."""
    found = []
    for p in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if not is_output_file(p.name):
            continue
        mode = os.lstat(p).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(p, "has a name reshard writes but is not a regular file reshard wrote; move it away")
        found.append(p)
    return found


def has_record(out_dir: Path) -> bool:
    meta = read_record(out_dir / META_NAME)
    return read_record(out_dir / PLAN_NAME) is not None or (meta is not None and meta.get("tool") == TOOL)


def clear_output(out_dir: Path, temp_only: bool = False) -> None:
    """Remove reshard's own files from ``out_dir`` (only temporaries when ``temp_only``); nothing else."""
    for p in _ours(out_dir):
        if not temp_only or p.name.endswith(".tmp"):
            p.unlink()


def complete(out_dir: Path, plan: str) -> dict[str, Any] | None:
    """The meta.json of a finished reshard with this plan, if every shard it lists is whole."""
    meta = read_record(out_dir / META_NAME)
    if meta is None or meta.get("tool") != TOOL or meta.get("plan") != plan:
        return None
    count = meta.get("output_shard_count")
    if not isinstance(count, int) or count < 0:
        return None
    for i in range(count):
        if not is_whole_shard(out_dir / f"{filtered_shard_name(i)}.tar"):
            return None
    return meta


def claim_output(out_dir: Path, plan: str, pool_identity: str, overwrite: bool) -> bool:
    """Make ``out_dir`` ready for a run of ``plan``; return whether shards already there may be kept.

    Without a record of reshard, files with reshard's names are never removed (one-line error). With
    ``overwrite`` reshard's files go. A partial run of the same plan on the untouched pool is resumed;
    of the same plan on a pool touched since (times or inodes differ: it cannot tell what changed), it is
    started over; of another plan, it is refused unless ``overwrite``.
    """
    ours = _ours(out_dir)
    if ours and not has_record(out_dir):
        names = ", ".join(p.name for p in ours[:3]) + (", ..." if len(ours) > 3 else "")
        raise InputError(out_dir, f"holds files reshard did not write ({names}; no {PLAN_NAME} or {META_NAME} "
                                  "of a reshard); move them away or pick another --name")
    if overwrite:
        clear_output(out_dir)
        return False
    clear_output(out_dir, temp_only=True)
    record = read_record(out_dir / PLAN_NAME)
    if record is None:
        if any(not p.name.endswith(".tmp") for p in ours):
            raise InputError(out_dir, "holds files from an unknown reshard; pass --overwrite to replace them")
        return False
    if record.get("plan") != plan:
        raise InputError(out_dir, "holds a reshard of a different subset, pool or settings; pass --overwrite to "
                                  "replace it")
    if record.get("pool_identity") != pool_identity:
        clear_output(out_dir)
        return False
    return True
