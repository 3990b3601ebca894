"""Reading one subset's embeddings from a 1M-row pool stays under 1 GiB: the npz files are mapped shard by
shard and only the subset's rows are copied (the whole pool's 768-d fp16 embeddings are 1.43 GiB).

Peak memory is the reading process's own ``VmHWM`` (a child started for it; ``ru_maxrss`` would carry the
parent's high-water mark)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.formats import write_subset
from poolsieve.core.uids import UidSet
from poolsieve.core.workspace import Workspace

ROWS, SHARDS, DIM = 1_000_000, 100, 768
LIMIT = 1 << 30
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import poolsieve.api as ps

    emb = ps.open(sys.argv[1]).embeddings("l14_img", subset="tenth").load()
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"rows": len(emb), "shape": list(emb.vectors.shape), "hwm": hwm,
                      "sum": float(emb.vectors.astype(np.float64).sum()), "first": emb.uids[0]}))
""")


def make_pool(root) -> tuple[Workspace, UidSet, float, str]:
    """100 score tables of 10k rows (1% undecoded) with 768-d fp16 image embeddings, and subset ``tenth``
    (a seeded 10% of the members); returns the workspace, the subset, the sum of its embeddings and its
    first uid in shard order."""
    ws = Workspace.create(root)
    ws.scores_dir.mkdir()
    rng = np.random.default_rng(0)
    per = ROWS // SHARDS
    block = rng.standard_normal((per, DIM), dtype=np.float32).astype(np.float16)
    chosen, total = [], 0.0
    for shard in range(SHARDS):
        keys = rng.integers(0, 256, (per, 16), dtype=np.uint8)
        uids = [k.tobytes().hex() for k in keys]
        status = np.where(rng.random(per) < 0.01, "decode_error", "success")
        vectors = block + np.float16(shard % 7)
        pd.DataFrame({"uid": uids, "status": status, "clip_l14_similarity_score": rng.random(per, np.float32)}
                     ).to_parquet(ws.score_table_path(f"{shard:05d}"))
        np.savez(ws.embeddings_path(f"{shard:05d}"), l14_img=vectors)
        pick = (rng.random(per) < 0.1) & (status == "success")
        chosen += [u for u, p in zip(uids, pick, strict=True) if p]
        total += float(vectors[pick].astype(np.float64).sum())
    subset = UidSet.from_hex(chosen)
    write_subset(ws.subset_path("tenth"), subset)
    return ws, subset, total, chosen[0]


@pytest.mark.subprocess  # the child process measures its own peak memory
def test_one_subsets_embeddings_from_a_1m_row_pool_peak_under_1_gib(tmp_path):
    ws, subset, total, first = make_pool(tmp_path / "pool")
    run = subprocess.run([sys.executable, "-c", CHILD, str(ws.root)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["rows"] == len(subset) and got["shape"] == [len(subset), DIM] and len(subset) > 95_000
    assert got["sum"] == pytest.approx(total, rel=1e-9) and got["first"] == first
    print(f"VmHWM {got['hwm'] / 2**20:.0f} MiB for {len(subset):,} of {ROWS:,} rows")
    assert got["hwm"] < LIMIT, f"peak {got['hwm'] / 2**30:.2f} GiB"
