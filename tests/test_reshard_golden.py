"""Reshard's output bytes against a known-good output: the digests below were made by the reshard of
commit db3945e (before its pass 1 and pass 2 were rewritten for speed) on the same generated pool.

The pool is built from SHAKE-256 bytes (no image encoder, no RNG whose stream could change between
library versions): 3 shards of 40 samples with "jpg" members from 100 bytes to 40 KB (both of the
writer's paths: kernel copy for large members, one pread for the small ones), a uid present twice
in the pool, and two subsets: 30% of the pool in pool order, and uids repeated (upsampling) with a
shuffle buffer. Every output file must come out byte for byte as before, whichever copy path runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from poolsieve.core import tar_io
from poolsieve.core.formats import write_subset
from poolsieve.core.tar_io import END_OF_ARCHIVE, padding, ustar_header
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.reshard import write
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard


def _bytes(label: str, n: int) -> bytes:
    return hashlib.shake_256(label.encode()).digest(n)


def build_pool(root: Path) -> Workspace:
    ws = Workspace.create(root)
    ws.shards_dir.mkdir(parents=True)
    uids: list[str] = []
    for shard in range(3):
        name = f"{shard:05d}"
        with open(ws.shards_dir / f"{name}.tar", "wb") as f:
            for i in range(40):
                key = f"{name}{i:04d}"
                uid = uids[5] if (shard, i) == (2, 7) else _bytes(f"uid {key}", 16).hex()
                size = 100 + int.from_bytes(_bytes(f"size {key}", 4), "big") % 40_000
                members = (("jpg", _bytes(f"jpg {key}", size)), ("json", json.dumps({"uid": uid, "key": key}).encode()),
                           ("txt", f"caption {key}".encode()))
                for ext, data in members:
                    f.write(ustar_header(f"{key}.{ext}", len(data)) + data + padding(len(data)))
                uids.append(uid)
            f.write(END_OF_ARCHIVE)
        (ws.shards_dir / f"{name}_stats.json").write_text(json.dumps({"successes": 40}))
    third = sorted({u for i, u in enumerate(uids) if _bytes(f"pick {i}", 1)[0] < 77})
    write_subset(ws.subset_path("third"), uids_to_pairs(third))
    repeats = sorted([uids[5]] * 3 + [uids[9]] * 2 + uids[40:70])
    write_subset(ws.subset_path("repeats"), uids_to_pairs(repeats), allow_repeats=True)
    return ws


KNOWN_GOOD = {
    "third/00000000.tar": "4883b7516370187de375238432068bc11b1067904d433b5d5260a7625f52e78f",
    "third/00000000_stats.json": "8be4895c732393fdeea231ea8ddbfe930b9fc37a5bd5a06ddd3737d14984868a",
    "third/00000001.tar": "b01e0e26cdd98546b27ac425deea8e7479d481138bf45170eeddd983d332ae0e",
    "third/00000001_stats.json": "129dc19a9aa868115f60fc8208892b26c595ae990fa3b530f8e0882ab84581bf",
    "third/00000002.tar": "5ac5418bb588777b40a37db3f85ca799150ad8357e9713fa7e44ac86e978c65d",
    "third/00000002_stats.json": "dc4a9549f8f687e312475aff7512e84c2e1222c5466127efe5cac2987bef5380",
    "third/missing_uids.npy": "524fceb17d802f4d9d5e22034f3fe85c8f1cd89e3d69344aafc55f0c7a23b2fc",
    "third/sample_ids.npy": "0decb179ab0511fc9552abb6539368b927bfbecefb90b031a22a7fa318cbcf5b",
    "repeats/00000000.tar": "1e3479cbe472c1c21c98f6f0d0f9877e0fe804b619e7657144d4ea44cd87e34f",
    "repeats/00000000_stats.json": "f74947b7928b693d0a961c8eccabbbdd6cd9ff208c7954f20dba11802b44414a",
    "repeats/00000001.tar": "4ebaad56453070debb930eda08e2bf1ad2f9e3996a5b1138aa212f2fe2a074f7",
    "repeats/00000001_stats.json": "ed41c5e7d9cffdfa5f1963dd64acbee29745fce375021b740f4ef4872eac9eb0",
    "repeats/00000002.tar": "88bbb86e46bac18c208da336c24d72cdbb7a99c73be907dd84bfaf36bd218246",
    "repeats/00000002_stats.json": "db6c50add919ef7a0533c01466e0afbcaa249bb358ec23c377e0fbba5f43078b",
    "repeats/missing_uids.npy": "524fceb17d802f4d9d5e22034f3fe85c8f1cd89e3d69344aafc55f0c7a23b2fc",
    "repeats/sample_ids.npy": "387dce1ee76647d1ed0d9253d4a811395f1140b4300371420be19cc607ea9adf",
}

CONFIGS = (ReshardConfig(subset="third", shard_size=16),
           ReshardConfig(subset="repeats", shard_size=16, shuffle_bufsize=10, seed=3))


def output_digests(ws: Workspace) -> dict[str, str]:
    out = {}
    for cfg in CONFIGS:
        folder = ws.filtered_dir(cfg.subset)
        for p in sorted(folder.iterdir()):
            if p.name.endswith((".tar", "_stats.json", ".npy")):
                out[f"{cfg.subset}/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize(("copy_min", "kernel_copy"), [(write.COPY_MIN, True), (0, True), (1 << 40, True),
                                                       (0, False)])
def test_output_is_byte_identical_to_the_known_good_one(tmp_path, local_runtime, monkeypatch, copy_min, kernel_copy):
    monkeypatch.setattr(write, "COPY_MIN", copy_min)
    monkeypatch.setattr(tar_io, "_kernel_copy", kernel_copy)
    ws = build_pool(tmp_path / "ws")
    for cfg in CONFIGS:
        reshard(ws, cfg, local_runtime)
    assert output_digests(ws) == KNOWN_GOOD
