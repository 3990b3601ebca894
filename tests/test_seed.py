"""``poolsieve seed``: a seed subset from a uid file, a metadata column, a metadata filter or a random draw,
kept to the pairs the download fetched, in DataComp's subset format; bad input in one line, exit 2."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.formats import read_uidset
from poolsieve.core.subsets import check_subset_record
from poolsieve.core.uids import UidSet
from poolsieve.pipeline import cli
from poolsieve.pipeline.seed import random_draw

N = 60
CAPTIONS = ["a red car parked on the street near the old town hall", "two dogs playing in the snow at dawn",
            "a bowl of fresh fruit on a wooden kitchen table", "sunset over the mountains with a quiet lake"]


def uid(i: int) -> str:
    return f"{i * 2654435761 % 2**64:016x}{i:016x}"


def downloaded_shard(folder, number, rows):
    """A shard as a download leaves it: the tar, its ``_stats.json`` and its parquet with each row's status."""
    name = f"{number:05d}"
    with tarfile.open(folder / f"{name}.tar", "w") as tar:
        for key, (u, status) in enumerate(rows):
            if status == "success":
                data = u.encode()
                info = tarfile.TarInfo(f"{name}{key:04d}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (folder / f"{name}_stats.json").write_text(json.dumps({"successes": sum(s == "success" for _, s in rows)}))
    pd.DataFrame({"uid": [u for u, _ in rows], "status": [s for _, s in rows]}).to_parquet(folder / f"{name}.parquet")


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "metadata").mkdir(parents=True)
    (root / "shards").mkdir()
    uids = [uid(i) for i in range(N)]
    pd.DataFrame({
        "uid": uids, "url": [f"http://127.0.0.1/{i}.jpg" for i in range(N)],
        "text": [CAPTIONS[i % 4] if i % 5 else "xy" for i in range(N)],  # every fifth caption too short for basic
        "original_width": [512] * N, "original_height": [384] * N,
        "is_clean": [i % 3 == 0 for i in range(N)], "score": np.arange(N) % 2,
    }).to_parquet(root / "metadata" / "00000.parquet")
    status = ["success" if i % 10 != 7 else "failed_to_download" for i in range(N)]  # 6 rows not fetched
    downloaded_shard(root / "shards", 0, list(zip(uids[:30], status[:30], strict=True)))
    downloaded_shard(root / "shards", 1, list(zip(uids[30:], status[30:], strict=True)))
    return root


def fetched() -> set[str]:
    return {uid(i) for i in range(N) if i % 10 != 7}


def seed(ws, *args) -> set[str]:
    assert cli.main(["seed", "-w", str(ws), *args]) == 0
    name = args[args.index("--name") + 1]
    npy = ws / "subsets" / f"{name}.npy"
    assert check_subset_record(npy) is not None  # the record describes the file (train-scorer checks it)
    assert np.load(npy).dtype == np.dtype("u8,u8")
    return set(read_uidset(npy).to_hex())


def test_from_a_uid_file_keeps_only_downloaded_pairs(ws, tmp_path, capsys):
    listed = [uid(i) for i in (0, 1, 7, 17, 42)] + ["ff" * 16]  # 7 and 17 failed; the last is not in the pool
    path = tmp_path / "uids.txt"
    path.write_text("# my clean pairs\n" + "\n".join(u.upper() if k % 2 else u for k, u in enumerate(listed)) + "\n\n")
    assert seed(ws, "--name", "mine", "--uids", str(path)) == {uid(0), uid(1), uid(42)}
    out = capsys.readouterr().out
    assert "not downloaded" in out and "train-scorer" in out
    record = json.loads((ws / "subsets" / "mine.json").read_text())
    assert record["given"] == 6 and record["not_downloaded"] == 3 and record["count"] == 3


def test_from_a_metadata_column(ws):
    assert seed(ws, "--name", "clean", "--column", "is_clean") == {uid(i) for i in range(0, N, 3)} & fetched()
    assert seed(ws, "--name", "odd", "--column", "score") == {uid(i) for i in range(1, N, 2)} & fetched()


def test_from_a_metadata_filter_is_the_filter_commands_subset(ws):
    got = seed(ws, "--name", "basic_seed", "--where", "basic")
    assert got == {uid(i) for i in range(N) if i % 5} & fetched()
    assert cli.main(["filter", "-w", str(ws), "--tables", str(ws / "metadata"), "--executor", "local",
                     "--spec", "same = basic"]) == 0
    assert got == set(read_uidset(ws / "subsets" / "same.npy").to_hex()) & fetched()


def test_random_draw_depends_on_content_and_seed_only(ws):
    a = seed(ws, "--name", "r1", "--random", "10")
    assert len(a) == 10 and a <= fetched()
    assert seed(ws, "--name", "r2", "--random", "10") == a
    assert seed(ws, "--name", "r3", "--random", "10", "--random-seed", "1") != a
    pool = UidSet.from_hex(sorted(fetched()))
    shuffled = UidSet.from_hex(list(np.random.default_rng(3).permutation(sorted(fetched()))))
    assert random_draw(pool, 10, 0) == random_draw(shuffled, 10, 0)
    assert random_draw(pool, 10, 0) == (random_draw(pool, 20, 0) & random_draw(pool, 10, 0))  # nested draws
    assert len(random_draw(pool, 10**6, 0)) == len(pool)


@pytest.mark.parametrize(("args", "message"), [
    ((), "give exactly one of"),
    (("--random", "5", "--column", "is_clean"), "--column and --random"),
    (("--column", "nope"), "has no column 'nope'"),
    (("--column", "text"), "not true/false or a number"),
    (("--random", "0"), "--random must be at least 1"),
    (("--name", "../x", "--random", "3"), "seed name '../x' is not allowed"),
    (("--where", "clip_score(fraction=0.5)"), ""),
])
def test_bad_input_is_one_line_and_writes_nothing(ws, capsys, args, message):
    argv = ["seed", "-w", str(ws), *args]
    if "--name" not in args:
        argv += ["--name", "bad"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (ws / "subsets").exists() or not list((ws / "subsets").glob("*.npy"))


def test_uid_file_errors_name_the_line(ws, tmp_path, capsys):
    path = tmp_path / "uids.txt"
    path.write_text(f"{uid(0)}\nnot-a-uid\n")
    assert cli.main(["seed", "-w", str(ws), "--name", "x", "--uids", str(path)]) == 2
    assert "line 2: 'not-a-uid' is not a uid" in capsys.readouterr().err
    path.write_text("ff" * 16 + "\n")
    assert cli.main(["seed", "-w", str(ws), "--name", "x", "--uids", str(path)]) == 2
    assert "the seed would be empty" in capsys.readouterr().err


def test_an_existing_subset_needs_overwrite(ws, capsys):
    seed(ws, "--name", "s", "--random", "3")
    assert cli.main(["seed", "-w", str(ws), "--name", "s", "--random", "4"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main(["seed", "-w", str(ws), "--name", "s", "--random", "4", "--overwrite"]) == 0
    assert len(read_uidset(ws / "subsets" / "s.npy")) == 4


def test_without_a_download_says_what_to_run(tmp_path, capsys):
    (tmp_path / "ws" / "shards").mkdir(parents=True)
    assert cli.main(["seed", "-w", str(tmp_path / "ws"), "--random", "3"]) == 2
    assert "run `poolsieve download` first" in capsys.readouterr().err
