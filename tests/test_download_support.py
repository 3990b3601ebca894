"""Helpers for the download tests: a generated pool served on 127.0.0.1, and readers of the result."""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.demo.image_server import ImageServer
from poolsieve.pipeline.demo.synthetic_pool import PoolSpec, generate_pool

# The pool is served on 127.0.0.1, which the network guard denies unless allowed.
FAST = {"image_size": 64, "processes": 2, "threads": 4, "timeout": 2.0, "fetch_deadline": 3.0, "retries": 0,
        "allow_networks": ["127.0.0.1/32"]}


@dataclass
class ServedPool:
    ws: Workspace
    server: ImageServer
    metadata: pd.DataFrame

    def path_of(self, uid: str) -> str:
        return f"/images/{uid}.jpg"


def make_served_pool(root: Path, n: int, per_file: int, seed: int = 0, **server_kwargs) -> ServedPool:
    """Start an image server on a free port, then generate a pool whose urls point at it."""
    (root / "synthetic").mkdir(parents=True, exist_ok=True)
    server = ImageServer(root / "synthetic", **server_kwargs).start()
    rates = {"too_small": 0.05, "non_english": 0.05}
    generate_pool(root, PoolSpec(num_samples=n, samples_per_file=per_file, image_size=96, seed=seed,
                                 base_url=server.url, defect_rates=rates, hard_rate=0.0))  # hard shapes blur little
    ws = Workspace.open(root)
    meta = pd.concat([pd.read_parquet(f) for f in ws.metadata_files()], ignore_index=True)
    return ServedPool(ws, server, meta)


def tar_uids(shards_dir: Path) -> Counter:
    """uid -> how many times it is in the shards' tars (reading every member: a truncated tar raises)."""
    seen: Counter = Counter()
    for tar_path in sorted(shards_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {}
            for m in tar:
                data = tar.extractfile(m).read()
                assert len(data) == m.size
                members[m.name] = data
        keys = {name.rsplit(".", 1)[0] for name in members}
        for key in keys:
            assert {f"{key}.jpg", f"{key}.txt", f"{key}.json"} <= set(members), f"{tar_path}: {key} incomplete"
            seen[json.loads(members[f"{key}.json"])["uid"]] += 1
    return seen


def parquet_rows(shards_dir: Path) -> pd.DataFrame:
    frames = []
    for p in sorted(shards_dir.glob("[0-9]*.parquet")):
        df = pd.read_parquet(p)
        df["shard"] = p.stem
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def assert_shards_whole(shards_dir: Path) -> None:
    """Every tar and parquet in shards/ has its stats; stats agree with the tar and the parquet."""
    names = {p.name for p in shards_dir.iterdir() if p.is_file()}
    for name in names:
        stem = name.split(".")[0].removesuffix("_stats")
        if name.endswith((".tar", ".parquet")) and stem.isdigit():
            assert f"{stem}_stats.json" in names, f"{name} without its stats"
    for stats_path in shards_dir.glob("*_stats.json"):
        stats = json.loads(stats_path.read_text())
        stem = stats_path.name.removesuffix("_stats.json")
        df = pd.read_parquet(shards_dir / f"{stem}.parquet")
        assert stats["count"] == len(df)
        assert stats["successes"] == int((df["status"] == "success").sum())
        with tarfile.open(shards_dir / f"{stem}.tar") as tar:
            assert len([m for m in tar if m.name.endswith(".jpg")]) == stats["successes"]


def processes_mentioning(text: str) -> list[int]:
    """pids of live processes whose command line contains ``text`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if text in cmd and "zombie" not in state:
            out.append(int(d.name))
    return out


def processes_in_group(pgid: int) -> list[int]:
    """pids of live (not zombie) processes in process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            out.append(int(d.name))
    return out
