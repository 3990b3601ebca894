"""Make a seed subset for ``train-scorer`` in one command, when no pretrained weights can be had.

A scorer needs a clean seed set, and the filters that would pick one need score tables, which need a
scorer. ``poolsieve seed`` breaks the circle: it writes ``subsets/NAME.npy`` (DataComp's ``u8,u8``
format, with its ``.json`` record) from one of

* ``--uids FILE``: a text file of hex uids, one per line (``#`` comments and blank lines ignored);
* ``--column COL``: the rows of ``metadata/*.parquet`` whose column ``COL`` is true (a boolean column, or
  a number: non-zero is true);
* ``--where SPEC``: a filter spec, as ``poolsieve filter --spec``, over the metadata tables (``basic`` and
  ``text_based`` run on CommonPool's metadata), or over ``--tables``;
* ``--random N``: N pairs drawn at random. The draw ranks every pair by a hash of its uid and
  ``--random-seed``, so it depends only on the pool's content: not on shard or row order.

The seed holds only pairs the download fetched (``shards/*.parquet``, status ``success``): what
``train-scorer`` can reshard. Uids given that the pool has not got are counted, not kept. Then::

    poolsieve seed -w pool --name clean --where basic
    poolsieve train-scorer -w pool --seed clean
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import STATUS_SUCCESS
from poolsieve.core.names import check_name
from poolsieve.core.progress import print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage, option
from poolsieve.core.subsets import write_subset_pair
from poolsieve.core.uids import UidSet
from poolsieve.core.untrusted_files import open_regular, regular_file_size
from poolsieve.core.workspace import Workspace, whole_shard_tars
from poolsieve.pipeline.filter.stage import FilterConfig, evaluate_subsets

MAX_UID_FILE_BYTES = 1 << 32  # 4 GiB: ~120M uids
SOURCES = ("uids", "column", "where", "random")


@dataclass
class SeedConfig:
    name: str = option("seed", "the subset to write: subsets/NAME.npy (and NAME.json)")
    uids: str | None = option(None, "a text file of hex uids, one per line", metavar="FILE")
    column: str | None = option(None, "a true/false column of metadata/*.parquet: its true rows", metavar="COL")
    where: str | None = option(None, "a filter spec over the metadata (or --tables), as `poolsieve filter --spec`",
                               metavar="SPEC")
    random: int | None = option(None, "this many pairs drawn at random (by a hash of each uid and --random-seed)",
                                metavar="N")
    random_seed: int = option(0, "the seed of --random's draw")
    tables: str | None = option(None, "the tables --where reads (default: metadata/)", metavar="DIR")


def _source(cfg: SeedConfig) -> str:
    given = [s for s in SOURCES if getattr(cfg, s) is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(f"--{s}" for s in given)
        raise ConfigError(f"give exactly one of --uids FILE, --column COL, --where SPEC, --random N (got {what})")
    return given[0]


def downloaded(ws: Workspace) -> UidSet:
    """The pairs the download fetched: the uids of ``shards/*.parquet`` rows whose status is success."""
    sets = []
    for tar in whole_shard_tars(ws.shards_dir):
        table = tar.with_suffix(".parquet")
        if not table.exists():
            continue
        t = pq.read_table(table, columns=["uid", "status"])
        ok = t.filter(pc.fill_null(pc.equal(t["status"], STATUS_SUCCESS), False))
        sets.append(UidSet.from_hex(ok["uid"], source=table))
    if not sets:
        raise InputError(ws.shards_dir, "no downloaded shards: run `poolsieve download` first (the seed is "
                                        "resharded from the pool's shards)")
    return UidSet.union_of(sets)


def uids_from_file(path: Path) -> UidSet:
    """The uids of a text file (one per line); a line that is not a 32-digit hex uid stops with its number."""
    if regular_file_size(path) > MAX_UID_FILE_BYTES:
        raise InputError(path, f"is over {MAX_UID_FILE_BYTES >> 30} GiB: not a uid list")
    with open_regular(path) as f:
        lines = f.read().decode("utf-8", "replace").splitlines()
    uids = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not re.fullmatch(r"[0-9a-fA-F]{32}", text):
            shown = ascii(text[:40])
            raise InputError(path, f"line {number}: {shown} is not a uid (32 hex digits)")
        uids.append(text.lower())
    if not uids:
        raise InputError(path, "holds no uids")
    return UidSet.from_hex(uids, source=path)


def uids_from_column(ws: Workspace, column: str) -> UidSet:
    """The uids of ``metadata/*.parquet`` rows whose ``column`` is true (non-zero)."""
    files = sorted(ws.metadata_dir.glob("*.parquet")) if ws.metadata_dir.is_dir() else []
    if not files:
        raise InputError(ws.metadata_dir, "no metadata parquet files to read a column from")
    sets = []
    for path in files:
        names = pq.read_schema(path).names
        if column not in names:
            raise InputError(path, f"has no column {column!r} (it has: {', '.join(names)})")
        t = pq.read_table(path, columns=["uid", column])
        values = t[column]
        try:
            truth = values if values.type == "bool" else pc.not_equal(values, 0)
        except Exception as e:  # noqa: BLE001 - arrow raises several kinds for a column it cannot compare
            raise InputError(path, f"column {column!r} is {values.type}, not true/false or a number") from e
        sets.append(UidSet.from_hex(t.filter(pc.fill_null(truth, False))["uid"], source=path))
    return UidSet.union_of(sets)


def uids_from_spec(ws: Workspace, cfg: SeedConfig, runtime: Runtime) -> UidSet:
    """The subset a filter spec makes over the metadata (or ``--tables``): ``poolsieve filter``'s own path."""
    tables = cfg.tables or str(ws.metadata_dir)
    filter_cfg = replace(FilterConfig(), subsets={cfg.name: cfg.where}, tables=tables)
    return evaluate_subsets(ws, filter_cfg, runtime)[cfg.name]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64s (wrapping arithmetic): a well-spread hash of each value."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def random_draw(pool: UidSet, count: int, seed: int) -> UidSet:
    """``count`` uids of ``pool``: those with the smallest hash of (seed, uid), whatever the pool's order."""
    if count < 1:
        raise ConfigError(f"--random must be at least 1, got {count}")
    if count >= len(pool):
        return pool
    halves = pool.keys.view("<u8").reshape(-1, 2)
    salt = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    rank = _mix(_mix(halves[:, 0] ^ salt) ^ halves[:, 1])
    chosen = np.argsort(rank, kind="stable")[:count]
    return UidSet(pool.keys[chosen])


def make_seed(ws: Workspace, cfg: SeedConfig, runtime: Runtime, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``subsets/NAME.npy`` and its record from the one source ``cfg`` names; return a summary."""
    name = check_name(cfg.name, "seed name")
    source = _source(cfg)
    out = ws.subset_path(name)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: subset '{name}' exists; pass --overwrite to replace it or choose another --name")
    pool = downloaded(ws)
    if source == "uids":
        given = uids_from_file(Path(cfg.uids).expanduser())
    elif source == "column":
        given = uids_from_column(ws, cfg.column)
    elif source == "where":
        given = uids_from_spec(ws, cfg, runtime)
    else:
        given = pool
    kept = given & pool
    if source == "random":
        kept = random_draw(pool, cfg.random, cfg.random_seed)
    if not len(kept):
        raise InputError(out, f"the seed would be empty: {len(given):,} uids from --{source}, none of them "
                              f"among the {len(pool):,} downloaded pairs")
    value = getattr(cfg, source)
    ws.subsets_dir.mkdir(parents=True, exist_ok=True)
    with ws.lock(f"subsets/{name}"):
        write_subset_pair(out, kept, {
            "name": name, "expression": f"seed({source}={value!r})", "seed": {source: value, **(
                {"random_seed": cfg.random_seed} if source == "random" else {})},
            "given": len(given), "not_downloaded": len(given - pool), "downloaded_pairs": len(pool),
            "fraction_of_pool": round(len(kept) / len(pool), 6),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
    return {"name": name, "source": f"--{source} {value}", "given": len(given), "not downloaded": len(given - pool),
            "kept": len(kept), "downloaded pairs": len(pool), "path": str(out)}


def print_report(summary: dict[str, Any]) -> None:
    print_summary("seed", [(k, f"{v:,}" if isinstance(v, int) else v) for k, v in summary.items()])
    print(f"next: poolsieve train-scorer -w WORKSPACE --seed {summary['name']}", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  poolsieve seed -w pool --name clean --where basic\n"
                "  poolsieve seed -w pool --name clean --uids clean_uids.txt\n"
                "  poolsieve seed -w pool --name clean --column is_clean\n"
                "  poolsieve seed -w pool --name clean --random 2000 --random-seed 1\n"
                "then: poolsieve train-scorer -w pool --seed clean")
    p.formatter_class = argparse.RawDescriptionHelpFormatter


STAGE = Stage("seed", SeedConfig, run=make_seed, report=print_report,
              reads=("metadata/", "shards/"), writes=("subsets/",))
