"""Fetch DataComp's pinned baseline files: its language model and image_based's centroids and targets.

``poolsieve fetch-assets NAME... [--dest DIR]`` fetches each file DataComp's ``baselines/utils.py``
pins, checks its sha256 against DataComp's pin and keeps it under DataComp's own file name in the
cache (``$POOLSIEVE_CACHE``, default ``~/.cache/poolsieve``) or in DIR. NAME is DataComp's name of
the file (``--list`` shows them), its file name (``lid.176.bin``) or ``all``::

    poolsieve fetch-assets fasttext                  # lid.176.bin: score and the filters use it from now on
    poolsieve fetch-assets small_centroids in1k_clip_vit_l14_{0..4} --dest assets/

A copy already there is hashed again and kept; one that does not match is refused, never replaced.
Nothing is saved until its sha256 matches. Without a network the command stops in one line saying
where to copy the file instead; ``$POOLSIEVE_ASSETS_URL`` fetches from a mirror (the URL of the folder
holding the files under their release names, e.g. ``lid.176.bin``, ``small_centroids_l14.pt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError
from poolsieve.core.pinned_assets import ASSETS, DEADLINE, TIMEOUT, asset, cache_dir, fetch
from poolsieve.core.progress import format_table, print_summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("names", nargs="*", metavar="NAME", help="DataComp's name of a pinned file (see --list), or all")
    p.add_argument("--dest", type=Path, help="folder to keep the files in (default: the cache, $POOLSIEVE_CACHE "
                                             "or ~/.cache/poolsieve; ~/.cache/datacomp serves DataComp's code too)")
    p.add_argument("--list", action="store_true", help="list the pinned files and exit")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help=f"seconds each connect and read may wait "
                                                                   f"(default {TIMEOUT:g})")
    p.add_argument("--deadline", type=float, default=DEADLINE, help=f"seconds one file's whole fetch may take "
                                                                    f"(default {DEADLINE:g})")


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    """``--list``, or fetch every NAME in turn (the first failure ends the command; files fetched stay)."""
    if args.list:
        rows = [(a.name, a.file_name, a.what) for a in ASSETS.values()]
        print(format_table(["name", "file", "what"], rows))
        return 0
    if not args.names:
        raise ConfigError("name the files to fetch (poolsieve fetch-assets --list shows them), or all")
    for value, flag in ((args.timeout, "--timeout"), (args.deadline, "--deadline")):
        if not value > 0:
            raise ConfigError(f"{flag} must be a positive number of seconds, not {value:g}")
    names = list(ASSETS) if "all" in args.names else list(dict.fromkeys(asset(n).name for n in args.names))
    folder = args.dest.expanduser() if args.dest is not None else cache_dir()
    fetched = kept = 0
    for name in names:
        path, now = fetch(name, folder, timeout=args.timeout, deadline=args.deadline, progress=True)
        fetched, kept = fetched + now, kept + (not now)
        state = "fetched" if now else "already there"
        print(f"{ASSETS[name].file_name}: {state}, sha256 matches DataComp's pin ({path.stat().st_size:,} bytes) "
              f"-> {path}", flush=True)
    print_summary("fetch-assets", [("fetched", fetched), ("already there", kept), ("folder", folder)])
    return 0
