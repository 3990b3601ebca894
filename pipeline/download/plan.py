"""img2dataset's shard plan: which metadata rows become which shard, and which shards are whole.

img2dataset cuts each metadata file into ``ceil(rows / samples_per_shard)`` shards whose ids run on from
file to file. A shard is whole once its tar and its ``_stats.json`` are in ``shards/`` (the stats file is
moved last, see ``process.promote_ready``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from poolsieve.core.errors import InputError
from poolsieve.core.formats import check_metadata_columns
from poolsieve.core.workspace import whole_shard_tars

STATS_RE = re.compile(r"^(\d+)_stats\.json$")


@dataclass
class FilePlan:
    path: Path
    rows: int
    first_shard: int
    shards: int


def plan_shards(files: list[Path], per_shard: int) -> list[FilePlan]:
    """img2dataset's sharding: each file is cut into ceil(rows / per_shard) shards, ids run on."""
    plans, next_id = [], 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
            names = pq.read_schema(f).names
        except Exception as e:  # noqa: BLE001
            raise InputError(f, f"not a readable parquet file ({e})") from None
        check_metadata_columns(f, names)
        n = math.ceil(meta.num_rows / per_shard)
        plans.append(FilePlan(f, meta.num_rows, next_id, n))
        next_id += n
    return plans


def idle_workers_notice(plans: list[FilePlan], per_shard: int, workers: int) -> str | None:
    """A one-line notice when the pool makes fewer shards than there are download workers (a shard is a
    worker's unit: the others would sit idle), with the ``--samples-per-shard`` that gives each one a shard."""
    shards, rows = sum(p.shards for p in plans), sum(p.rows for p in plans)
    if shards >= workers or rows < workers:
        return None
    fits = max(1, -(-rows // workers))
    return (f"{rows:,} rows make {shards} shard{'s' if shards != 1 else ''} of up to {per_shard:,} samples for "
            f"{workers} download processes, so {workers - shards} of them have nothing to do; "
            f"--samples-per-shard {fits:,} gives each one a shard (set it before the first download: "
            "the shard layout stays for the workspace)")


def shard_digits(max_id: int) -> int:
    return max(5, len(str(max(max_id, 0))))


def whole_shards(shards_dir: Path) -> dict[int, str]:
    """Shard id -> name of the shards whose tar and ``_stats.json`` are in ``shards/`` (stats move last)."""
    return {int(tar.stem): tar.stem for tar in whole_shard_tars(shards_dir) if tar.stem.isdigit()}


def whole_shard_ids(shards_dir: Path) -> set[int]:
    return set(whole_shards(shards_dir))
