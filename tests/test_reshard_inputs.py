"""Reshard and a pool or workspace from someone else: member kinds it never copies, a FIFO named like a shard,
names, ``--overwrite`` on folders it did not write, and fingerprints that follow content, not file times."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
import time

import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import write_subset
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.reshard.stage import STAGE as RESHARD
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard


def reshard_cli(argv: list[str]) -> int:
    from poolsieve.pipeline import cli

    return cli.main(["reshard", *argv])


@pytest.fixture
def pool(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    samples = make_samples(60, seed=8)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=20)
    write_subset(ws.subset_path("all"), uids_to_pairs(sorted(s.uid for s in samples)))
    return ws, samples


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_only_allowed_kinds_are_copied_and_the_rest_is_counted(tmp_path, local_runtime, capsys):
    ws = Workspace.create(tmp_path / "ws")
    ws.shards_dir.mkdir(parents=True)
    samples = make_samples(5, seed=3)
    with tarfile.open(ws.shards_dir / "00000.tar", "w") as tar:
        for i, s in enumerate(samples):
            key = f"k{i}"
            for ext, data in (("jpg", s.jpeg), ("pyd", b"pickle?"), ("txt", s.caption.encode()),
                              ("PTH", b"torch?"), ("npy", b"\x93NUMPY"), ("seg.jpg", b"a second image"),
                              ("json", json.dumps({"uid": s.uid}).encode())):
                _add(tar, f"{key}.{ext}", data)
        _add(tar, "README", b"no extension")
    (ws.shards_dir / "00000_stats.json").write_text(json.dumps({"successes": 5}))
    write_subset(ws.subset_path("all"), uids_to_pairs(sorted(s.uid for s in samples)))
    summary = reshard(ws, ReshardConfig(subset="all"), local_runtime)
    assert summary["skipped_member_kinds"] == {"(no extension)": 1, "pth": 5, "pyd": 5, "seg.jpg": 5}
    with tarfile.open(ws.filtered_dir("all") / "00000000.tar") as tf:
        kinds = [n.split(".", 1)[1] for n in tf.getnames()]
    assert kinds == ["jpg", "txt", "npy", "json"] * 5  # file order kept, the rest never copied
    RESHARD.report(summary)
    out = capsys.readouterr().out
    assert "members not copied" in out and ".pyd x5" in out and ".pth x5" in out and "(no extension) x1" in out


def test_a_fifo_named_like_a_shard_is_refused_in_one_line(pool, capsys):
    ws, _ = pool
    os.unlink(ws.shards_dir / "00001.tar")
    os.mkfifo(ws.shards_dir / "00001.tar")
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(
        reshard_cli(["-w", str(ws.root), "--executor", "local", "--subset", "all"])), daemon=True)
    run.start()
    run.join(60)
    if run.is_alive():
        os.close(os.open(ws.shards_dir / "00001.tar", os.O_RDWR))  # let the blocked reader go, then fail
        pytest.fail("reshard blocked on a FIFO named like a shard")
    err = capsys.readouterr().err.strip().splitlines()
    assert codes == [2] and len(err) == 1 and "00001.tar: is a FIFO, not a regular file" in err[0]
    assert not ws.filtered_dir("all").exists() or not list(ws.filtered_dir("all").glob("*.tar"))


@pytest.mark.parametrize("name", ["../x", "two\nlines", "\x1b[2Jclear", ".hidden", "a/b"])
def test_names_follow_the_one_rule(pool, name, capsys):
    ws, _ = pool
    assert reshard_cli(["-w", str(ws.root), "--executor", "local", "--subset", "all", "--name", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reshard output name" in err[0] and "\n" not in err[0] and "\x1b" not in err[0]
    with pytest.raises(ConfigError, match="subset name"):
        reshard(ws, ReshardConfig(subset="bad\tname"), None)


def test_overwrite_removes_only_what_reshard_wrote(pool, local_runtime):
    ws, _ = pool
    cfg = ReshardConfig(subset="all", shard_size=25)
    reshard(ws, cfg, local_runtime)
    out_dir = ws.filtered_dir("all")
    (out_dir / "notes.txt").write_text("mine")
    (out_dir / ".00000009.tar.mine.tmp").write_text("not a temporary of reshard's")
    (out_dir / "photos").mkdir()
    (out_dir / "photos" / "00000000.tar").write_text("mine too")
    again = reshard(ws, cfg, local_runtime, overwrite=True)
    assert again["shards_written"] == 3
    assert (out_dir / "notes.txt").read_text() == "mine" and (out_dir / "photos" / "00000000.tar").exists()
    assert (out_dir / ".00000009.tar.mine.tmp").exists()


def test_a_folder_reshard_did_not_write_is_never_cleared(pool, local_runtime):
    ws, _ = pool
    out_dir = ws.filtered_dir("all")
    out_dir.mkdir(parents=True)
    (out_dir / "00000000.tar").write_text("a user's own tar, not a reshard's")
    (out_dir / "meta.json").write_text(json.dumps({"tool": "something else"}))
    for overwrite in (False, True):
        with pytest.raises(InputError, match="holds files reshard did not write .*00000000.tar"):
            reshard(ws, ReshardConfig(subset="all"), local_runtime, overwrite=overwrite)
    assert (out_dir / "00000000.tar").read_text() == "a user's own tar, not a reshard's"
    shutil.rmtree(out_dir)
    out_dir.mkdir()
    os.symlink(ws.shards_dir / "00000.tar", out_dir / "00000000.tar")
    with pytest.raises(InputError, match="00000000.tar: has a name reshard writes but is not a regular file"):
        reshard(ws, ReshardConfig(subset="all"), local_runtime, overwrite=True)
    assert (ws.shards_dir / "00000.tar").stat().st_size > 0


def test_a_copy_without_file_times_reruns_nothing(pool, local_runtime, tmp_path):
    """``cp -r`` (times and inodes differ): the pool is read once to check its content, nothing is rewritten;
    the next rerun reads nothing (cached digests). A pool whose content changed is refused."""
    ws, _ = pool
    cfg = ReshardConfig(subset="all", shard_size=25)
    reshard(ws, cfg, local_runtime)
    copy = Workspace.open(shutil.copytree(ws.root, tmp_path / "copy", copy_function=shutil.copy))
    time.sleep(0.01)
    for p in copy.shards_dir.iterdir():
        os.utime(p, ns=(1, 1))  # as a sync tool may leave them
    before = {p.name: p.stat().st_mtime_ns for p in copy.filtered_dir("all").iterdir()}
    summary = reshard(copy, cfg, local_runtime)
    assert summary["shards_written"] == 0 and summary["shards_skipped"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in copy.filtered_dir("all").iterdir()} == before
    cache = json.loads((copy.root / "filtered" / ".pool_digests.json").read_text())
    assert sorted(cache["shards"]) == ["00000.tar", "00001.tar", "00002.tar"]

    tar = copy.shards_dir / "00001.tar"
    data = bytearray(tar.read_bytes())
    data[512 + 10] ^= 0xFF  # same size, other content (inside the first image)
    tar.write_bytes(bytes(data))
    with pytest.raises(InputError, match="made from pool shards whose content has changed since"):
        reshard(copy, cfg, local_runtime)
    assert reshard(copy, cfg, local_runtime, overwrite=True)["shards_written"] == 3


def test_a_failed_write_stops_the_scans_and_leaves_no_final_names(pool, local_runtime, monkeypatch):
    """The scans run in a feeder thread beside the writes: a write that fails ends the run at once, the
    feeder stops, and what the run wrote is rolled back."""
    from poolsieve.pipeline.reshard import schedule

    ws, _ = pool
    calls: list[str] = []
    real = schedule.write_shard

    def failing(unit):
        calls.append(unit.tar_path)
        if len(calls) == 2:
            raise InputError(unit.sources[0], "shrank while resharding: cannot read bytes 0-1")
        return real(unit)

    monkeypatch.setattr(schedule, "write_shard", failing)
    threads = threading.active_count()
    with pytest.raises(InputError, match="shrank while resharding"):
        reshard(ws, ReshardConfig(subset="all", shard_size=10), local_runtime)
    assert threading.active_count() == threads  # the feeder thread is gone
    out_dir = ws.filtered_dir("all")
    assert sorted(p.name for p in out_dir.iterdir()) == []  # nothing under a final name, no temporaries
