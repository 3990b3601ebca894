"""poolsieve's uid file and reshard output against DataComp's own resharder.py (opt-in).

DataComp's code is not part of poolsieve and needs webdataset 0.2.31, so this test runs only when
``DATACOMP_RESHARDER`` names mlfoundations/datacomp's ``resharder.py`` and ``DATACOMP_PYTHON`` a
Python that can run it (its own venv). Nothing here uses the network.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.formats import write_subset
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard

RESHARDER = os.environ.get("DATACOMP_RESHARDER")
PYTHON = os.environ.get("DATACOMP_PYTHON")

pytestmark = [pytest.mark.subprocess, pytest.mark.skipif(
    not (RESHARDER and PYTHON and Path(RESHARDER).is_file()),
    reason="set DATACOMP_RESHARDER=<datacomp>/resharder.py and DATACOMP_PYTHON=<python with webdataset==0.2.31>",
)]


def members(out_dir: Path) -> dict[str, bytes]:
    out = {}
    for tar_path in sorted(out_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            out.update({m.name: tf.extractfile(m).read() for m in tf.getmembers()})
    return out


def test_datacomp_resharder_reads_our_uid_file_and_matches_our_output(tmp_path, local_runtime):
    ws = Workspace.create(tmp_path / "ws")
    samples = make_samples(300, seed=11, fail_every=10)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=60)
    ok = [s.uid for s in samples if s.jpeg is not None]
    listed = ok[::3] + [ok[1]] * 3 + ["0" * 32]  # upsampled uid, uid not in the pool
    write_subset(ws.subset_path("mix"), uids_to_pairs(listed), allow_repeats=True)

    dc_out = tmp_path / "datacomp"
    dc_out.mkdir()
    proc = subprocess.run(
        [PYTHON, RESHARDER, "-i", str(ws.shards_dir), "-o", str(dc_out), "-s", str(ws.subset_path("mix")),
         "--shard-format", "{:05d}.tar", "--shard-stats-format", "{:05d}_stats.json", "-j", "2",
         "--shard-size", "25"],
        capture_output=True, text=True, cwd=Path(RESHARDER).parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reshard(ws, ReshardConfig(subset="mix", shard_size=25), local_runtime)

    theirs, ours = members(dc_out), members(ws.filtered_dir("mix"))
    uids = collections.Counter(json.loads(v)["uid"] for k, v in theirs.items() if k.endswith(".json"))
    assert uids == collections.Counter(u for u in listed if u in set(ok))
    assert theirs == ours  # same member names ({uid}-{j}.ext) and bytes
    meta = json.loads((dc_out / "meta.json").read_text())
    assert int(meta["output_count"]) == sum(uids.values())
