"""Issue 23, finding 10: a full disk or a read-only workspace ends a command in one line, exit 2.

The workspace lives on a small tmpfs mounted for the test. Filled to the last byte (``ENOSPC``) or remounted
read-only (``EROFS``), every writing stage the test can reach cheaply (filter, reshard, submit, inspect
--html) must end with one line that names the path and says what is wrong, not a traceback and exit 1, and
leave nothing half-written under a final name; once space is freed, the rerun works. A unit that raises the
error inside a Ray task comes through the same way. Running as root, ``chmod`` cannot make a folder
read-only, hence the mounts; where mounting is not allowed the tests are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_integrity_locks import scored_pool

from poolsieve.core.subsets import write_subset_pair
from poolsieve.core.uids import uids_to_pairs
from poolsieve.pipeline import cli

pytestmark = pytest.mark.subprocess  # every test mounts a tmpfs (mount and umount are child processes)

STAGES = {  # argv after the workspace; what the stage writes (nothing may be left half-written there)
    "filter": (["filter", "--spec", "made = clip_score(fraction=0.5)"], "subsets"),
    "reshard": (["reshard", "--subset", "x"], "filtered"),
    "submit": (["submit", "--subset", "x"], "submissions"),
    "inspect --html": (["inspect", "--html"], "report"),
}


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block; the test is skipped where mounting fails."""
    path.mkdir()
    done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill or make read-only ({done.stderr.strip() or 'mount failed'}): "
                    "needs root with mount rights")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """A file that takes every free byte of ``folder``'s file system but ``leave``."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with contextlib.suppress(OSError), open(filler, "ab") as f:  # the last partial page
        while True:
            f.write(b"\0")
            f.flush()
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def pool(root: Path):
    ws, samples = scored_pool(root / "ws", 40, 20)
    write_subset_pair(ws.subset_path("x"), uids_to_pairs(sorted(s.uid for s in samples[::2])), {"name": "x"})
    return ws


def one_error_line(err: str, command: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith(f"poolsieve {command}: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def whole(folder: Path) -> list[str]:
    """Files under ``folder`` with a final name (not a hidden temporary one), each checked to be whole."""
    import json
    import tarfile

    import numpy as np

    names = []
    for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if p.suffix == ".tar":
            with tarfile.open(p) as tar:
                tar.getmembers()
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".npy":
            np.load(p, allow_pickle=False)
        elif p.suffix == ".html":
            assert p.read_text().endswith("</html>"), p
        names.append(str(p.relative_to(folder)))
    return names


@pytest.mark.parametrize(("stage", "leave"), [*((s, 0) for s in STAGES), ("reshard", 24 << 10),
                                              ("inspect --html", 12 << 10)])
def test_full_disk_ends_each_stage_in_one_line(tmp_path, capsys, stage, leave):
    """No byte free (the first write, the writer's lock, fails), or a little (a shard or the page fails)."""
    argv, output = STAGES[stage]
    with tmpfs(tmp_path / "disk") as disk:
        ws = pool(disk)
        before = {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()}
        filler = fill(disk, leave)
        code = cli.main([argv[0], "-w", str(ws.root), "--executor", "local", *argv[1:]])
        line = one_error_line(capsys.readouterr().err, argv[0])
        assert code == 2 and "no space left on the device [errno 28]" in line, line
        assert str(disk) in line  # the path it could not write
        assert all(p.read_bytes() == data for p, data in before.items())  # nothing already written is lost
        left = whole(ws.root / output)
        filler.unlink()
        code = cli.main([argv[0], "-w", str(ws.root), "--executor", "local", *argv[1:]])
        assert code == 0, capsys.readouterr().err
        assert set(left) <= set(whole(ws.root / output))  # what the failed run left under final names is whole


@pytest.mark.parametrize("stage", list(STAGES))
def test_read_only_workspace_ends_each_stage_in_one_line(tmp_path, capsys, stage):
    argv, output = STAGES[stage]
    with tmpfs(tmp_path / "disk") as disk:
        ws = pool(disk)
        before = {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()}
        done = _mount("-o", "remount,ro", str(disk))
        assert done.returncode == 0, done.stderr
        code = cli.main([argv[0], "-w", str(ws.root), "--executor", "local", *argv[1:]])
        line = one_error_line(capsys.readouterr().err, argv[0])
        assert code == 2 and "the file system is read-only [errno 30]" in line and str(disk) in line, line
        assert {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()} == before


RAY_RESHARD = """
import sys
from poolsieve.pipeline import cli
sys.exit(cli.main(["reshard", "-w", sys.argv[1], "--subset", "x", "--executor", "ray", "--num-cpus", "2"]))
"""


@pytest.mark.ray  # the CLI in a child process, on a local Ray
def test_full_disk_inside_a_ray_task_ends_in_one_line(tmp_path):
    """reshard's units run as Ray tasks: the task's OSError (errno and path) reaches the CLI's one line."""
    with tmpfs(tmp_path / "disk") as disk:
        ws = pool(disk)
        filler = fill(disk, 24 << 10)  # room for the lock and the log, not for the shards the tasks write
        done = subprocess.run([sys.executable, "-c", RAY_RESHARD, str(ws.root)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
        line = one_error_line(done.stderr, "reshard")
        assert done.returncode == 2 and "no space left on the device [errno 28]" in line, done.stderr
        assert f"{ws.filtered_dir('x')}/00000000.tar: " in line, line
        filler.unlink()
