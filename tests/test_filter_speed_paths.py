"""`poolsieve filter` runs table filters in-process unless Ray pays for its start-up (issue 19, part 2),
and both paths write the same subsets: identical ``.npy`` bytes and the same ``.json`` record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.filter.stage import (
    RAY_ABOVE_MB,
    FilterConfig,
    filter_runtime,
    reads_embeddings,
    run_filter,
)

SPEC = {
    "clip30": "clip_score(model=l14, fraction=0.3)",
    "b32_hi": "clip_score(threshold=0.3)",
    "english": "basic",
    "everything": "no_filter",
    "both": "english & clip30",
    "rest": "~both",
}
WORDS = np.array(["a", "photo", "of", "the", "dog", "cat", "red", "car", "on", "beach", "une", "photo", "de", "chat"])


def make_pool(root: Path, rows: int = 3000, shards: int = 6) -> Workspace:
    rng = np.random.default_rng(11)
    ws = Workspace.create(root)
    ws.scores_dir.mkdir()
    for shard, idx in enumerate(np.array_split(np.arange(rows), shards)):
        n = len(idx)
        pd.DataFrame({
            "uid": [f"{int(v):032x}" for v in rng.integers(0, 2**62, n)],
            "text": [" ".join(rng.choice(WORDS, k)) for k in rng.integers(1, 8, n)],
            "original_width": rng.integers(100, 600, n), "original_height": rng.integers(100, 600, n),
            "clip_b32_similarity_score": np.round(rng.normal(0.3, 0.05, n), 3),  # ties at the cut
            "clip_l14_similarity_score": np.round(rng.normal(0.25, 0.06, n), 3),
            "language": rng.choice(["en", "fr"], n), "status": np.where(rng.random(n) < 0.02, "decode_error", "success"),
        }).to_parquet(ws.score_table_path(f"{shard:05d}"), index=False)
    return ws


def records(ws: Workspace) -> dict[str, tuple[bytes, dict]]:
    """Each subset's ``.npy`` bytes and its record without the timings and the creation time."""
    out = {}
    for name in SPEC:
        record = json.loads(ws.subset_info_path(name).read_text())
        for key in ("seconds", "created"):
            record.pop(key)
        for step in record["steps"]:
            step.pop("seconds")
        out[name] = (ws.subset_path(name).read_bytes(), record)
    return out


def test_small_pools_are_filtered_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import poolsieve.pipeline.filter.stage as filter_stage

    ws = make_pool(tmp_path / "pool")
    tables = ws.score_tables()
    ray = Runtime(executor="ray")
    # A Ray already running in this process (another test's) is always used: checked first, then the
    # size rule on its own.
    monkeypatch.setattr(filter_stage, "_ray_running", lambda: True)
    assert filter_runtime(ray, tables, False, RAY_ABOVE_MB) is ray
    monkeypatch.setattr(filter_stage, "_ray_running", lambda: False)
    assert filter_runtime(ray, tables, False, RAY_ABOVE_MB).executor == "local"  # a few kB: in-process
    assert filter_runtime(ray, tables, False, 0) is ray  # over the limit: the Ray runtime, still not started
    cluster = Runtime(executor="ray", address="127.0.0.1:1")
    assert filter_runtime(cluster, tables, False, RAY_ABOVE_MB) is cluster  # a named cluster is always used
    local = Runtime(executor="local")
    assert filter_runtime(local, tables, False, 0) is local
    # embeddings count only for filters that read them
    npz = ws.scores_dir / "00000.npz"
    npz.write_bytes(b"\0" * 3_000_000)
    assert filter_runtime(ray, tables, False, 2).executor == "local"
    assert filter_runtime(ray, tables, True, 2) is ray
    assert not reads_embeddings({"and": [{"ref": "basic"}, {"filter": "clip_score", "params": {}}]})
    assert reads_embeddings({"or": [{"ref": "basic"}, {"not": {"ref": "semdedup"}}]})
    assert reads_embeddings({"filter": "d2_pruning", "params": {"fraction": 0.5}})


@pytest.mark.subprocess
def test_whole_command_never_imports_ray_for_a_small_pool(tmp_path: Path) -> None:
    ws = make_pool(tmp_path / "pool")
    code = ("import sys; from poolsieve.pipeline.cli import main; "
            f"rc = main(['filter', '-w', {str(ws.root)!r}, '--spec', 'clip30 = clip_score(model=l14, fraction=0.3)']); "
            "print('RAY IMPORTED' if 'ray' in sys.modules else 'no ray', 'torch' in sys.modules, rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "no ray False 0"


def test_ray_and_in_process_write_the_same_files(tmp_path: Path, ray_runtime) -> None:
    """The same spec on Ray (``ray_above_mb=0``) and in-process: identical ``.npy`` bytes and records."""
    in_process, on_ray = make_pool(tmp_path / "a"), make_pool(tmp_path / "b")
    run_filter(in_process, FilterConfig(subsets=SPEC, allow_small=True), Runtime(executor="local"))
    ray_out = run_filter(on_ray, FilterConfig(subsets=SPEC, ray_above_mb=0, allow_small=True), ray_runtime)
    assert all(r["status"] == "made" for r in ray_out.values())
    ours, theirs = records(in_process), records(on_ray)
    for name in SPEC:
        assert ours[name][0] == theirs[name][0], name
        a, b = ours[name][1], theirs[name][1]
        assert a["pool"].pop("table_folder") == b["pool"].pop("table_folder") == "scores"
        assert a == b, name
    assert 0 < len(np.load(in_process.subset_path("both"))) < len(np.load(in_process.subset_path("clip30")))
