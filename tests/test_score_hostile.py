"""Hostile shard contents in ``score``: every payload is built here, and each test fails on a reader that
trusts the shard.

* a sample's ``.json`` with ``original_width`` Infinity, 1e30, -5, NaN, a string: that row's value is null
  and every shard is scored (in-process and under Ray);
* a 16 GiB ``.jpg`` member (a sparse file: a header declaring it, then a hole) is recorded ``too_large``,
  never read; a 50 MB caption is cut to ``MAX_CAPTION_BYTES`` before anything reads it, and costs little;
* a FIFO named like a shard (``shards/00002.tar``) is refused in one line; the other shards are scored.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import make_samples, write_img2dataset_shards
from test_score import save_tiny_checkpoint

from poolsieve.core import formats  # read as formats.X, so this file imports on any revision
from poolsieve.core.errors import InputError
from poolsieve.core.formats import read_score_table
from poolsieve.core.runtime import Runtime
from poolsieve.core.shard_reader import read_shard
from poolsieve.core.tar_io import READ_BLOCK
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

PER_SHARD = 6
SPARSE_SIZE = 16 << 30


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=2)


def make_pool(root: Path, shards: int = 3) -> Workspace:
    ws = Workspace.create(root)
    write_img2dataset_shards(ws.shards_dir, make_samples(shards * PER_SHARD, seed=5, image_size=40), PER_SHARD)
    return ws


class Sparse:
    """Member data that is a hole of ``size`` zero bytes in the file (no disk used)."""

    def __init__(self, size: int):
        self.size = size


def members(tar_path: Path) -> list[tuple[str, bytes | Sparse]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def write_members(tar_path: Path, items: list[tuple[str, bytes | Sparse]]) -> None:
    """A tar of ``items`` in order (GNU headers, so a member may declare more than 8 GiB)."""
    with open(tar_path, "wb") as f:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = data.size if isinstance(data, Sparse) else len(data)
            f.write(info.tobuf(tarfile.GNU_FORMAT))
            if isinstance(data, Sparse):
                f.seek(data.size, os.SEEK_CUR)
            else:
                f.write(data)
            f.write(b"\0" * (-info.size % 512))
        f.write(b"\0" * 1024)


def edit_json(items: list[tuple[str, bytes]], key: str, **changes) -> None:
    """Set ``changes`` in the ``.json`` member of sample ``key`` (Infinity and NaN written as such; a
    ``str`` subclass ``Raw`` as raw JSON text)."""
    for i, (name, data) in enumerate(items):
        if name == f"{key}.json":
            meta = json.loads(data) | {k: (f"@{k}@" if isinstance(v, Raw) else v) for k, v in changes.items()}
            text = json.dumps(meta)
            for k, v in changes.items():
                text = text.replace(f'"@{k}@"', v) if isinstance(v, Raw) else text
            items[i] = (name, text.encode())
            return
    raise KeyError(key)


class Raw(str):
    """JSON text written as it is."""


@contextlib.contextmanager
def address_space_cap(extra: int) -> Iterator[None]:
    """Let this process map at most ``extra`` more bytes for the block: a reader that loads a 16 GiB
    member whole fails with MemoryError instead of taking the machine's memory."""
    vm = next(int(line.split()[1]) << 10 for line in Path("/proc/self/status").read_text().splitlines()
              if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def fails_instead_of_hanging(seconds: float, fifos: list[Path]) -> Iterator[None]:
    """Fail the test (rather than hang the suite) when the block is still waiting on one of ``fifos`` after
    ``seconds``: from then on a writer opens and closes each FIFO, so a reader stuck on it reads an empty
    file (and fails the test's own checks)."""
    done, unblocked = threading.Event(), threading.Event()

    def unblock() -> None:
        if done.wait(seconds):
            return
        unblocked.set()
        while not done.wait(0.2):
            for fifo in fifos:
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    assert not unblocked.is_set(), f"a reader waited on a FIFO for {seconds}s"


# ------------------------------------------------------------------------ finding 7: bad values
BAD_WIDTHS = {1: float("inf"), 2: 1e30, 3: -5, 4: float("nan"), 5: "640"}


def _pool_with_bad_values(root: Path) -> Workspace:
    ws = make_pool(root)
    tar = ws.shards_dir / "00001.tar"
    items = members(tar)
    for i, width in BAD_WIDTHS.items():
        edit_json(items, f"00001{i:04d}", original_width=width)
    write_members(tar, items)
    return ws


@pytest.mark.parametrize("runtime", ["local_runtime", pytest.param("ray_runtime", marks=pytest.mark.ray)])
def test_out_of_range_json_values_become_null_and_every_shard_is_scored(tmp_path, checkpoint, runtime, request):
    ws = _pool_with_bad_values(tmp_path / "ws")
    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=4, language=False)
    summary = score_pool(ws, config, request.getfixturevalue(runtime), quiet=True)
    assert summary["scored now"] == 3 and summary["failed shards"] == 0
    df = read_score_table(ws.score_table_path("00001"))
    assert df["original_width"].isna().tolist() == [False] + [True] * 5
    assert df["original_width"][0] == 256 and df["original_height"].eq(256).all()
    assert (df["status"] == "success").all()
    for shard in ("00000", "00002"):
        assert read_score_table(ws.score_table_path(shard))["original_width"].eq(256).all()


def test_a_json_integer_too_long_to_read_is_out_of_range_not_an_error(tmp_path):
    """5000 digits: more than Python's int() takes from text (it raises ValueError)."""
    ws = make_pool(tmp_path / "ws", shards=1)
    tar = ws.shards_dir / "00000.tar"
    items = members(tar)
    edit_json(items, "000000000", original_height=Raw("9" * 5000), original_width=Raw("-" + "9" * 5000))
    write_members(tar, items)
    meta = read_shard(tar)[0].meta
    assert meta["original_height"] == float("inf") and meta["original_width"] == float("-inf")
    assert formats.pixel_count_or_none(meta["original_height"]) is None


# ------------------------------------------------------------------ finding 8: members and captions
def test_a_16gib_image_member_is_recorded_too_large_and_never_read(tmp_path, checkpoint):
    ws = make_pool(tmp_path / "ws", shards=2)
    tar = ws.shards_dir / "00000.tar"
    items = members(tar)
    items = [(n, Sparse(SPARSE_SIZE) if n == "000000002.jpg" else d) for n, d in items]
    write_members(tar, items)
    assert tar.stat().st_size > SPARSE_SIZE and tar.stat().st_blocks * 512 < 64 << 20  # little disk used
    with address_space_cap(2 << 30):  # 2 GiB more at most: a whole read of 16 GiB cannot happen
        samples = read_shard(tar)
    assert [s.image_over_cap for s in samples] == [None, None, SPARSE_SIZE, None, None, None]
    assert samples[2].image is None and samples[2].uid and samples[3].image  # the member after it is read
    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=4, language=False)
    with address_space_cap(4 << 30):
        summary = score_pool(ws, config, Runtime(executor="local"), quiet=True)
    too_large = f"images over {formats.MAX_IMAGE_BYTES >> 20} MiB (too_large, not read)"
    assert summary["scored now"] == 2 and summary[too_large] == 1
    df = read_score_table(ws.score_table_path("00000"))
    assert df["status"].tolist() == ["success"] * 2 + [formats.STATUS_TOO_LARGE] + ["success"] * 3
    assert "17179869184 bytes" in df["error"][2] and df["sha256"][2] is None
    assert df[df["status"] == "success"]["clip_poolsieve_tiny_similarity_score"].notna().all()


def test_a_50mb_caption_is_cut_before_anything_reads_it(tmp_path, checkpoint):
    from poolsieve.pipeline.score.encode import Encoder
    from poolsieve.pipeline.score.model_entries import parse_models
    from poolsieve.pipeline.score.prepare import iter_prepared_chunks

    ws = make_pool(tmp_path / "ws", shards=1)
    tar = ws.shards_dir / "00000.tar"
    items = members(tar)
    huge = ("a looong caption é " * 3_000_000).encode()[: 50 * 10**6]  # 50 MB, multi-byte characters
    items = [(n, huge if n == "000000001.txt" else d) for n, d in items]
    write_members(tar, items)

    samples = read_shard(tar)
    assert len(samples[1].text) < 10**6  # not read whole
    assert len(samples[1].text.encode()) <= formats.MAX_CAPTION_BYTES
    assert samples[1].caption_full_bytes == len(huge)
    assert huge.decode().startswith(samples[1].text) and "\ufffd" not in samples[1].text
    assert samples[0].caption_full_bytes is None

    encoder = Encoder(parse_models([f"poolsieve-tiny:{checkpoint}"]), "cpu", "fp32", threads=1)
    plan = encoder.plan(chunk_size=8, language=True)
    list(iter_prepared_chunks(tar, plan))  # warm: tokenizer, fastText
    tracemalloc.start()
    start = time.process_time()
    chunks = list(iter_prepared_chunks(tar, plan))
    cpu = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the 50 MB is never held (nor ftfy's copies); the tar's index is read through one window of READ_BLOCK
    assert peak < (8 << 20) + READ_BLOCK, f"peak {peak / 2**20:.1f} MiB"
    assert cpu < 5, f"{cpu:.1f} CPU s"  # about 3.5 CPU-minutes when the whole caption went through
    assert chunks[0].columns["caption_length"][1] <= formats.MAX_CAPTION_BYTES

    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=4)
    summary = score_pool(ws, config, Runtime(executor="local"), quiet=True)
    assert summary[f"captions cut to {formats.MAX_CAPTION_BYTES >> 10} KiB"] == 1
    df = read_score_table(ws.score_table_path("00000"))
    assert df["status"].eq("success").all() and df["text"][1] == samples[1].text
    kept = formats.MAX_CAPTION_BYTES
    assert df["error"][1] == f"caption truncated: the first {kept} of its {len(huge)} bytes kept"
    assert df["error"].drop(index=1).isna().all()


def test_a_long_caption_in_the_json_is_cut_the_same_way(tmp_path):
    ws = make_pool(tmp_path / "ws", shards=1)
    tar = ws.shards_dir / "00000.tar"
    items = [(n, d) for n, d in members(tar) if n != "000000003.txt"]
    edit_json(items, "000000003", caption="x" * 100_000)
    write_members(tar, items)
    sample = read_shard(tar)[3]
    assert len(sample.caption) < 100_000
    assert sample.caption == "x" * formats.MAX_CAPTION_BYTES and sample.caption_full_bytes == 100_000


# ----------------------------------------------------------------------- finding 9: not regular files
def test_a_fifo_named_like_a_shard_is_refused_and_the_others_are_scored(tmp_path, checkpoint, local_runtime):
    ws = make_pool(tmp_path / "ws", shards=3)
    fifo = ws.shards_dir / "00002.tar"
    fifo.unlink()
    os.mkfifo(fifo)
    config = ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=4, language=False)
    with fails_instead_of_hanging(30, [fifo]), pytest.raises(InputError) as err:
        score_pool(ws, config, local_runtime, quiet=True)
    assert err.value.path == fifo and "is a FIFO, not a regular file" in str(err.value)
    assert "\n" not in str(err.value) and "the other shards are scored" in str(err.value)
    assert ws.score_table_path("00000").exists() and ws.score_table_path("00001").exists()
    assert not ws.score_table_path("00002").exists()


def test_tables_npz_and_json_that_are_not_regular_files_are_refused(tmp_path):
    from poolsieve.core.formats import read_embeddings, read_json, read_metadata, read_subset

    readers = {"scores.parquet": read_score_table, "emb.npz": lambda p: read_embeddings(p, ["b32_img"]),
               "meta.parquet": read_metadata, "record.json": read_json, "subset.npy": read_subset}
    fifos = []
    for name in readers:
        os.mkfifo(tmp_path / name)
        fifos.append(tmp_path / name)
    (tmp_path / "folder.json").mkdir()
    with fails_instead_of_hanging(10, fifos):
        for name, read in readers.items():
            with pytest.raises(InputError, match="is a FIFO, not a regular file") as err:
                read(tmp_path / name)
            assert err.value.path == tmp_path / name
        with pytest.raises(InputError, match="is a folder"):
            read_json(tmp_path / "folder.json")
    with pytest.raises(InputError, match="missing.json: does not exist"):
        read_json(tmp_path / "missing.json")


def test_a_json_member_over_its_cap_refuses_its_shard_without_reading_it(tmp_path):
    ws = make_pool(tmp_path / "ws", shards=1)
    tar = ws.shards_dir / "00000.tar"
    items = [(n, Sparse(8 << 30) if n == "000000004.json" else d) for n, d in members(tar)]
    write_members(tar, items)
    with address_space_cap(1 << 30), pytest.raises(InputError, match="its .json is 8589934592 bytes, over"):
        read_shard(tar)
