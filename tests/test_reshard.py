"""The reshard stage: exact subset content, full shards, determinism, upsampling, resume and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.errors import InputError
from poolsieve.core.formats import read_subset, write_subset
from poolsieve.core.uids import SUBSET_DTYPE, uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.reshard.plan import buffered_shuffle_order
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard

SAFE_MEMBER = re.compile(r"^[0-9a-f]{32}-\d+\.(jpg|txt|json)$")


@pytest.fixture
def pool(tmp_path):
    """A 200-sample pool in 5 shards (every 9th download failed) and its successful samples."""
    ws = Workspace.create(tmp_path / "ws")
    samples = make_samples(200, seed=3, fail_every=9)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=40)
    return ws, [s for s in samples if s.jpeg is not None]


def read_output(out_dir: Path) -> list[dict]:
    """Every sample of every output shard, in shard order: key, uid, fields' bytes, shard index."""
    out = []
    for tar_path in sorted(out_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                if not out or out[-1]["key"] != key:
                    out.append({"key": key, "shard": tar_path.name})
                out[-1][ext] = tf.extractfile(m).read()
    for s in out:
        s["uid"] = json.loads(s["json"])["uid"]
    return out


def shard_bytes(out_dir: Path, meta: bool = True) -> dict[str, str]:
    """Digest of every output file (``meta.json`` names the output folder, so it can be left out)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out_dir.iterdir())
            if p.name.endswith((".tar", "_stats.json", ".npy")) or (meta and p.name == "meta.json")}


def final_names(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")) if out_dir.exists() else []


def test_output_holds_exactly_the_subset(pool, local_runtime):
    ws, ok = pool
    chosen = ok[::3]
    absent = ["0" * 31 + "1", "f" * 32]
    write_subset(ws.subset_path("third"), uids_to_pairs([s.uid for s in chosen] + absent))
    summary = reshard(ws, ReshardConfig(subset="third", shard_size=16), local_runtime)

    out_dir = ws.filtered_dir("third")
    got = read_output(out_dir)
    by_uid = {s.uid: s for s in chosen}
    assert sorted(s["uid"] for s in got) == sorted(by_uid)
    for s in got:
        assert s["key"] == f"{s['uid']}-0"
        assert s["jpg"] == by_uid[s["uid"]].jpeg
        assert s["txt"].decode() == by_uid[s["uid"]].caption
    # Pool order is kept: shard order, then key order.
    pool_order = [s.uid for s in ok if s.uid in by_uid]
    assert [s["uid"] for s in got] == pool_order
    # Every shard is full but the last; stats and meta agree with the tars.
    sizes = [json.loads((out_dir / f"{i:08d}_stats.json").read_text())["successes"]
             for i in range(summary["output_shard_count"])]
    assert sizes[:-1] == [16] * (len(sizes) - 1) and 0 < sizes[-1] <= 16 and sum(sizes) == len(chosen)
    assert [sum(1 for s in got if s["shard"] == f"{i:08d}.tar") for i in range(len(sizes))] == sizes
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["output_shard_count"] == len(sizes) == -(-len(chosen) // 16)
    assert meta["output_shard_format"] == "{:08d}.tar" and meta["output_count"] == len(chosen)
    # The subset copy (DataComp's name) and the report of uids not in the pool.
    assert (out_dir / "sample_ids.npy").read_bytes() == ws.subset_path("third").read_bytes()
    missing = read_subset(out_dir / "missing_uids.npy")
    assert sorted(missing.tolist()) == sorted(uids_to_pairs(absent).tolist())
    assert summary["missing_unique_uids"] == 2 and summary["found_unique_uids"] == len(chosen)


def test_ray_and_local_agree_and_reruns_are_byte_identical(pool, ray_runtime, local_runtime):
    ws, ok = pool
    write_subset(ws.subset_path("half"), uids_to_pairs([s.uid for s in ok[1::2]]))
    reshard(ws, ReshardConfig(subset="half", name="on_ray", shard_size=10), ray_runtime)
    reshard(ws, ReshardConfig(subset="half", name="local", shard_size=10), local_runtime)
    first = shard_bytes(ws.filtered_dir("on_ray"))
    assert shard_bytes(ws.filtered_dir("local"), meta=False) == shard_bytes(ws.filtered_dir("on_ray"), meta=False)
    assert sum(n.endswith(".tar") for n in first) == -(-len(ok[1::2]) // 10)
    again = reshard(ws, ReshardConfig(subset="half", name="on_ray", shard_size=10), ray_runtime, overwrite=True)
    assert again["shards_written"] == len([n for n in first if n.endswith(".tar")])
    assert shard_bytes(ws.filtered_dir("on_ray")) == first
    for runtime, name in [(ray_runtime, "shuffled_ray"), (local_runtime, "shuffled_local")]:
        reshard(ws, ReshardConfig(subset="half", name=name, shard_size=10, shuffle_bufsize=30, seed=4), runtime)
    assert (shard_bytes(ws.filtered_dir("shuffled_ray"), meta=False)
            == shard_bytes(ws.filtered_dir("shuffled_local"), meta=False))


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_upsampling_writes_each_copy_with_a_distinct_key(tmp_path, request, executor):
    runtime = request.getfixturevalue(f"{executor}_runtime")
    ws = Workspace.create(tmp_path / "ws")
    samples = make_samples(30, seed=5)
    samples.append(samples[4].__class__(**{**samples[4].__dict__, "caption": "the same uid again"}))
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=8)
    uids = [samples[0].uid] * 3 + [samples[4].uid] * 2 + [samples[7].uid]
    write_subset(ws.subset_path("up"), uids_to_pairs(uids), allow_repeats=True)
    summary = reshard(ws, ReshardConfig(subset="up", shard_size=4), runtime)

    got = read_output(ws.filtered_dir("up"))
    keys = [s["key"] for s in got]
    assert len(keys) == len(set(keys))
    assert sorted(k for k in keys if k.startswith(samples[0].uid)) == [f"{samples[0].uid}-{j}" for j in range(3)]
    # samples[4]'s uid occurs twice in the pool and twice in the subset: 4 copies, keys -0..-3.
    assert sorted(k for k in keys if k.startswith(samples[4].uid)) == [f"{samples[4].uid}-{j}" for j in range(4)]
    assert all(s["jpg"] == samples[0].jpeg for s in got if s["uid"] == samples[0].uid)
    assert summary["output_count"] == 3 + 4 + 1 and summary["output_shard_count"] == 2


def test_shuffle_buffer_is_seeded(pool, local_runtime):
    ws, ok = pool
    write_subset(ws.subset_path("all"), uids_to_pairs([s.uid for s in ok]))
    for name, bufsize, seed in [("plain", 0, 0), ("s1", 50, 1), ("s1b", 50, 1), ("s2", 50, 2)]:
        reshard(ws, ReshardConfig(subset="all", name=name, shard_size=32, shuffle_bufsize=bufsize, seed=seed),
                local_runtime)
    order = {n: [s["key"] for s in read_output(ws.filtered_dir(n))] for n in ("plain", "s1", "s1b", "s2")}
    assert order["s1"] == order["s1b"]
    assert order["s1"] != order["plain"] and order["s1"] != order["s2"]
    assert sorted(order["s1"]) == sorted(order["plain"]) == sorted(order["s2"])
    assert shard_bytes(ws.filtered_dir("s1"), meta=False) == shard_bytes(ws.filtered_dir("s1b"), meta=False)


def test_buffered_shuffle_order_is_a_local_permutation():
    order = buffered_shuffle_order(1000, 20, seed=7)
    assert sorted(order.tolist()) == list(range(1000))
    assert np.array_equal(order, buffered_shuffle_order(1000, 20, seed=7))
    # An item leaves the buffer only after it entered: no position is emitted before index - bufsize.
    assert all(order[: max(i - 19, 0)].max(initial=-1) <= i for i in range(0, 1000, 50))
    assert np.array_equal(buffered_shuffle_order(5, 0, seed=1), np.arange(5))


@pytest.mark.parametrize(("cut", "executor"), [("mid_member", "local"), ("end_marker", "local"),
                                              pytest.param("mid_member", "ray", marks=pytest.mark.ray)])
def test_truncated_pool_tar_is_an_error_and_writes_nothing(pool, request, cut, executor):
    """On Ray, output shards before the bad pool shard may be written first: they are rolled back."""
    runtime = request.getfixturevalue(f"{executor}_runtime")
    ws, ok = pool
    write_subset(ws.subset_path("all"), uids_to_pairs([s.uid for s in ok]))
    victim = ws.shards_dir / "00004.tar"
    data = victim.read_bytes()
    if cut == "mid_member":
        victim.write_bytes(data[: len(data) // 2 + 100])
    else:  # drop the end-of-archive blocks: the tar ends exactly after a member
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            last = tf.getmembers()[-1]
        victim.write_bytes(data[: last.offset_data + -(-last.size // 512) * 512])
    with pytest.raises(InputError, match="truncated tar") as err:
        reshard(ws, ReshardConfig(subset="all", shard_size=16), runtime)
    assert err.value.path == victim
    assert final_names(ws.filtered_dir("all")) == []
    assert [p.name for p in ws.filtered_dir("all").glob(".*")] == []  # no plan, no temporaries


def test_unsorted_or_wrongly_typed_subset_is_an_error(pool, local_runtime):
    ws, ok = pool
    ws.subsets_dir.mkdir(parents=True, exist_ok=True)
    pairs = uids_to_pairs([s.uid for s in ok[:10]])
    np.save(ws.subset_path("unsorted"), np.sort(pairs, order=["f0", "f1"])[::-1])
    np.save(ws.subset_path("typed"), pairs["f0"])
    with pytest.raises(InputError, match="not sorted"):
        reshard(ws, ReshardConfig(subset="unsorted"), local_runtime)
    with pytest.raises(InputError, match="dtype"):
        reshard(ws, ReshardConfig(subset="typed"), local_runtime)
    with pytest.raises(InputError, match="does not exist"):
        reshard(ws, ReshardConfig(subset="nope"), local_runtime)
    assert not (ws.root / "filtered").exists()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_member_names_are_never_paths(tmp_path, local_runtime):
    ws = Workspace.create(tmp_path / "deep" / "ws")
    ws.shards_dir.mkdir(parents=True)
    samples = make_samples(4, seed=9)
    names = ["../../../escape/k0", "/tmp/abs-escape/k1", "a/../../k2", "k3"]
    with tarfile.open(ws.shards_dir / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for key, s in zip(names, samples, strict=True):
            _add(tar, f"{key}.jpg", s.jpeg)
            _add(tar, f"{key}.txt", s.caption.encode())
            _add(tar, f"{key}.json", json.dumps({"uid": s.uid}).encode())
        _add(tar, "../../../escape/evil.sh/..", b"#!/bin/sh\n")  # no usable extension: skipped
    (ws.shards_dir / "00000_stats.json").write_text(json.dumps({"successes": 4}))
    write_subset(ws.subset_path("all"), uids_to_pairs([s.uid for s in samples]))
    before = set(tmp_path.rglob("*"))
    summary = reshard(ws, ReshardConfig(subset="all"), local_runtime)

    out_dir = ws.filtered_dir("all")
    created = {p for p in set(tmp_path.rglob("*")) - before}
    from poolsieve.core.locks import lock_path

    digests = out_dir.parent / ".pool_digests.json"  # reshard's cache of the pool shards' content digests
    assert all(out_dir in p.parents or p in (out_dir, out_dir.parent, lock_path(out_dir), digests) for p in created)
    assert not Path("/tmp/abs-escape").exists()
    with tarfile.open(out_dir / "00000000.tar") as tf:
        members = tf.getnames()
    assert len(members) == 12 and all(SAFE_MEMBER.match(n) for n in members)
    assert summary["output_count"] == 4


def test_resume_redoes_only_missing_shards(pool, local_runtime):
    ws, ok = pool
    write_subset(ws.subset_path("all"), uids_to_pairs([s.uid for s in ok]))
    cfg = ReshardConfig(subset="all", shard_size=20)
    reshard(ws, cfg, local_runtime)
    out_dir = ws.filtered_dir("all")
    original = shard_bytes(out_dir)
    # What a kill leaves: a tar without its stats, a torn temporary, no meta.json, a missing shard.
    (out_dir / "00000002_stats.json").unlink()
    (out_dir / "00000002.tar").write_bytes(b"torn")
    (out_dir / ".00000003.tar.abc12_45.tmp").write_bytes(b"partial")
    (out_dir / "00000004.tar").unlink()
    (out_dir / "00000004_stats.json").unlink()
    (out_dir / "meta.json").unlink()
    untouched = {n: os.stat(out_dir / n).st_mtime_ns for n in ("00000000.tar", "00000001.tar", "00000003.tar")}

    summary = reshard(ws, cfg, local_runtime)
    assert summary["shards_written"] == 2 and summary["shards_skipped"] == summary["output_shard_count"] - 2
    assert shard_bytes(out_dir) == original
    assert {n: os.stat(out_dir / n).st_mtime_ns for n in untouched} == untouched
    assert not list(out_dir.glob(".*.tmp"))
    # A finished reshard is not redone; a different subset into the same folder needs --overwrite.
    assert reshard(ws, cfg, local_runtime)["shards_written"] == 0
    write_subset(ws.subset_path("other"), uids_to_pairs([s.uid for s in ok[:5]]))
    with pytest.raises(InputError, match="--overwrite"):
        reshard(ws, ReshardConfig(subset="other", name="all"), local_runtime)
    assert shard_bytes(out_dir) == original
    replaced = reshard(ws, ReshardConfig(subset="other", name="all"), local_runtime, overwrite=True)
    assert replaced["output_count"] == 5 and final_names(out_dir).count("00000001.tar") == 0


def test_webdataset_reads_the_output(pool, local_runtime):
    import webdataset as wds

    ws, ok = pool
    write_subset(ws.subset_path("some"), uids_to_pairs([s.uid for s in ok[:30]]))
    reshard(ws, ReshardConfig(subset="some", shard_size=12), local_runtime)
    urls = [str(p) for p in sorted(ws.filtered_dir("some").glob("*.tar"))]
    seen = [(s["__key__"], s["jpg"]) for s in wds.WebDataset(urls, shardshuffle=False)]
    assert [k for k, _ in seen] == [f"{s.uid}-0" for s in ok[:30]]
    assert [j for _, j in seen] == [s.jpeg for s in ok[:30]]


def reshard_cli(argv: list[str]) -> int:
    """``poolsieve reshard ARGV`` through the CLI's own context and error handling."""
    from poolsieve.pipeline import cli

    return cli.main(["reshard", *argv])


def test_cli_reshard_and_one_line_errors(pool, capsys):
    ws, ok = pool
    write_subset(ws.subset_path("cli"), uids_to_pairs([s.uid for s in ok[:25]]))
    common = ["--workspace", str(ws.root), "--executor", "local"]
    assert reshard_cli(["--subset", "subsets/cli.npy", "--shard-size", "10", *common]) == 0
    out = capsys.readouterr().out
    assert "== reshard" in out and "25 in 3 shards" in out
    np.save(ws.subsets_dir / "bad.npy", np.arange(3, dtype=np.uint64))
    assert reshard_cli(["--subset", "bad", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.npy" in err[0] and "dtype" in err[0]
    assert reshard_cli(["--subset", "cli", "--name", "../x", *common]) == 2


def test_empty_selection_writes_no_shards(pool, local_runtime):
    ws, _ = pool
    write_subset(ws.subset_path("none"), np.empty(0, SUBSET_DTYPE))
    summary = reshard(ws, ReshardConfig(subset="none"), local_runtime)
    assert summary["output_shard_count"] == 0 and summary["output_count"] == 0
    assert final_names(ws.filtered_dir("none")) == ["meta.json", "missing_uids.npy", "sample_ids.npy"]


KILL_SCRIPT = """
import sys
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
reshard(Workspace.open(sys.argv[1]), ReshardConfig(subset="all", shard_size=7), Runtime(executor="local"))
"""


@pytest.mark.subprocess
def test_resume_after_a_real_kill(tmp_path, local_runtime):
    """SIGKILL a reshard once its first shard is whole; the rerun ends with the uninterrupted run's bytes."""
    import signal
    import subprocess
    import time

    ws = Workspace.create(tmp_path / "ws")
    samples = make_samples(1500, seed=2, image_size=48)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=300)
    write_subset(ws.subset_path("all"), uids_to_pairs([s.uid for s in samples]))
    reshard(ws, ReshardConfig(subset="all", name="reference", shard_size=7), local_runtime)

    out_dir = ws.filtered_dir("all")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(ws.root)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out_dir / "00000000_stats.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = reshard(ws, ReshardConfig(subset="all", shard_size=7), local_runtime)
    assert summary["shards_skipped"] >= 1
    assert shard_bytes(out_dir, meta=False) == shard_bytes(ws.filtered_dir("reference"), meta=False)
    assert not list(out_dir.glob(".*.tmp"))


def test_one_reshard_at_a_time_per_folder(pool, local_runtime):
    import fcntl

    from poolsieve.core.errors import PoolsieveError
    from poolsieve.core.locks import lock_path

    ws, ok = pool
    write_subset(ws.subset_path("some"), uids_to_pairs([s.uid for s in ok[:5]]))
    out_dir = ws.filtered_dir("some")
    out_dir.mkdir(parents=True)
    with open(lock_path(out_dir), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PoolsieveError, match="another poolsieve process .*is writing it"):
            reshard(ws, ReshardConfig(subset="some"), local_runtime)
    assert reshard(ws, ReshardConfig(subset="some"), local_runtime)["output_count"] == 5
