"""Issue 13, finding 8: concurrent runs neither mix nor lose work.

Every stage that writes a workspace folder holds its writer's lock (``core/locks.py``): a second writer of
the same folder fails at once in one line naming it and the holder's pid. Reshard reads the subset once
and refuses to finish when the subset file is replaced underneath it. The second writer is always a real
process here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.formats import read_subset
from poolsieve.core.runtime import Runtime
from poolsieve.core.subsets import SHA256_KEY, write_subset_pair
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import cli
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard

CLI = [sys.executable, "-m", "poolsieve.pipeline.cli"]


def scored_pool(root: Path, n: int, per_shard: int, image_size: int = 32) -> tuple[Workspace, list]:
    ws = Workspace.create(root)
    samples = make_samples(n, seed=21, image_size=image_size)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=per_shard)
    ws.scores_dir.mkdir()
    for shard, lo in enumerate(range(0, n, per_shard)):
        rows = range(lo, min(n, lo + per_shard))
        pd.DataFrame({"uid": [samples[i].uid for i in rows], "text": [samples[i].caption for i in rows],
                      "clip_b32_similarity_score": [i / n for i in rows], "status": ["success"] * len(rows)},
                     ).to_parquet(ws.score_table_path(f"{shard:05d}"))
    return ws, samples


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=300)


@pytest.mark.subprocess
def test_second_filter_of_a_name_fails_in_one_line(tmp_path):
    ws, _ = scored_pool(tmp_path / "ws", 40, 20)
    with ws.lock("subsets/x"):  # this test process is the first writer of subsets/x
        second = run_cli(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "x = clip_score(fraction=0.5)"])
        other = run_cli(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "y = clip_score(fraction=0.5)"])
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1, second.stderr
    assert f"{ws.root / 'subsets' / 'x'}: another poolsieve process (pid {os.getpid()}) is writing it" in err[0]
    assert not ws.subset_path("x").exists()
    assert other.returncode == 0 and ws.subset_path("y").exists()  # other names are not held up
    again = run_cli(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "x = clip_score(fraction=0.5)"])
    assert again.returncode == 0 and "made" in again.stdout


@pytest.mark.subprocess
def test_concurrent_filters_of_one_name_never_mix(tmp_path):
    """Four real processes overwrite one name with four specs at once: each one either makes it or fails
    in one line on the lock, and the pair left is whole and is what its record says."""
    ws, samples = scored_pool(tmp_path / "ws", 400, 100)
    fractions = (0.1, 0.2, 0.3, 0.4)
    procs = [subprocess.Popen([*CLI, "filter", "-w", str(ws.root), "--executor", "local", "--overwrite",
                               "--spec", f"x = clip_score(fraction={f})"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for f in fractions]
    outcomes = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    made = [f for f, (code, out, _) in zip(fractions, outcomes, strict=True) if code == 0]
    for code, _, err in outcomes:
        assert code == 0 or (code == 2 and len(err.strip().splitlines()) == 1 and "is writing it" in err), err
    assert made
    record = json.loads(ws.subset_info_path("x").read_text())
    pairs = read_subset(ws.subset_path("x"))
    fraction = record["spec"]["params"]["fraction"]
    assert fraction in made and record["count"] == len(pairs)
    alone = run_cli(["filter", "-w", str(ws.root), "--executor", "local", "--spec", f"ref = clip_score(fraction={fraction})"])
    assert alone.returncode == 0 and np.array_equal(pairs, read_subset(ws.subset_path("ref")))


@pytest.mark.subprocess
def test_score_and_reshard_refuse_a_held_folder(tmp_path, capsys):
    ws, samples = scored_pool(tmp_path / "ws", 20, 10)
    write_subset_pair(ws.subset_path("all"), uids_to_pairs([s.uid for s in samples]), {"name": "all"})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom poolsieve.core.workspace import Workspace\nws = Workspace.open(sys.argv[1])\n"
        "with ws.lock('scores'), ws.lock('filtered/all'):\n    print('held', flush=True)\n    time.sleep(120)\n"),
        str(ws.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["score", "--model", "poolsieve-tiny", "--no-language"], ["reshard", "--subset", "all"]):
            code = cli.main([argv[0], "-w", str(ws.root), "--executor", "local", *argv[1:]])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1 and f"(pid {holder.pid}) is writing it" in err[0], (argv, err)
        assert not list(ws.scores_dir.glob("*.npz")) and not ws.filtered_dir("all").exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the killed holder: nothing stale is left behind
    assert reshard(ws, ReshardConfig(subset="all"), Runtime(executor="local"))["output_count"] == 20


RESHARD_SCRIPT = """
import sys
from poolsieve.pipeline import cli
sys.exit(cli.main(["reshard", "-w", sys.argv[1], "--subset", "x", "--shard-size", "5", "--executor", "local"]))
"""


@pytest.mark.subprocess
def test_subset_replaced_while_reshard_runs_is_refused_at_the_end(tmp_path, local_runtime):
    ws, samples = scored_pool(tmp_path / "ws", 2000, 400, image_size=48)
    first = uids_to_pairs([s.uid for s in samples[::2]])
    write_subset_pair(ws.subset_path("x"), first, {"name": "x"})
    out_dir = ws.filtered_dir("x")
    proc = subprocess.Popen([sys.executable, "-c", RESHARD_SCRIPT, str(ws.root)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out_dir / "00000000_stats.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "reshard ended before the subset could be replaced"
        second = uids_to_pairs([s.uid for s in samples[1::2]])
        record = write_subset_pair(ws.subset_path("x"), second, {"name": "x"})  # what `filter --overwrite` does
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read().strip().splitlines()
    err = [line for line in err if "error" in line]  # progress lines go to stderr too
    assert code == 2 and len(err) == 1 and str(ws.subset_path("x")) in err[0], err
    assert "changed while reshard was reading it" in err[0]
    assert sorted(p.name for p in out_dir.iterdir()) == [], "nothing is left under the final names"

    # The rerun reshards the subset as it is now, byte for byte as a fresh run into another folder.
    assert record[SHA256_KEY]
    again = reshard(ws, ReshardConfig(subset="x", shard_size=5), local_runtime)
    reference = reshard(ws, ReshardConfig(subset="x", name="reference", shard_size=5), local_runtime)
    assert again["output_count"] == reference["output_count"] == len(second)
    tars = sorted(p.name for p in out_dir.glob("*.tar"))
    assert tars == sorted(p.name for p in ws.filtered_dir("reference").glob("*.tar"))
    assert all((out_dir / t).read_bytes() == (ws.filtered_dir("reference") / t).read_bytes() for t in tars)


def test_a_symlinked_lock_file_never_writes_its_target(tmp_path, capsys):
    """Issue 23, finding 5: ``subsets/.x.lock -> ~/.bashrc`` in a copied workspace. The lock is opened
    without following the link (``core/locks.py``), so the target stays byte-identical and the command
    fails in one line; the same for another stage's lock (submit's ``submissions/.x.lock``)."""
    ws, samples = scored_pool(tmp_path / "ws", 40, 20)
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("alias ll='ls -l'\nexport PATH=$HOME/bin:$PATH\n")
    before = victim.read_bytes()
    ws.subsets_dir.mkdir(exist_ok=True)
    (ws.subsets_dir / ".x.lock").symlink_to(victim)
    code = cli.main(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "x = clip_score(fraction=0.5)"])
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert code == 2 and len(err) == 1, err
    assert err[0].endswith(f"{ws.subsets_dir / '.x.lock'}: is a symlink, not a regular file; poolsieve reads and "
                           "writes only regular files here")
    assert victim.read_bytes() == before and not ws.subset_path("x").exists()

    write_subset_pair(ws.subset_path("s"), uids_to_pairs(sorted(s.uid for s in samples[:5])), {"name": "s"})
    (ws.root / "submissions").mkdir()
    (ws.root / "submissions" / ".s.lock").symlink_to(victim)
    code = cli.main(["submit", "-w", str(ws.root), "--executor", "local", "--subset", "s"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and "submissions/.s.lock: is a symlink" in err[0], err
    assert victim.read_bytes() == before and not (ws.root / "submissions" / "s").exists()
