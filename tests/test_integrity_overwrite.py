"""Issue 23, finding 2 and its kin: ``--overwrite`` (and every rerun that replaces a folder) removes only
what poolsieve wrote (``core/owned_folders.py``).

``train --overwrite`` used to remove ``--output victim`` before finding that ``--data`` did not exist, and
``--subset ../subsets`` / ``../../outside`` removed folders outside ``runs/``. Here every stage that removes or
replaces a folder (train, evaluate, train-scorer's seed folder and ``--out`` file, inspect's report folder)
meets a user's folder, a symlink to one, or a bad name, and must leave it byte-identical, failing in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import tree
from test_seed_scorer import TINY
from test_train import write_wds

from poolsieve.core.errors import PoolsieveError
from poolsieve.pipeline import cli
from poolsieve.pipeline.download.stage import STATE_NAME, remove_own_files


def user_folder(path: Path) -> Path:
    """A folder of a user's own files, none of them a poolsieve record."""
    (path / "photos").mkdir(parents=True)
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (path / "notes.txt").write_text("my notes\n")
    (path / "index.html").write_text("<p>my page</p>\n")
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    """``poolsieve ARGV`` in this process: (exit code, its one error line or '')."""
    code = cli.main([*argv, "--executor", "local"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert "Traceback" not in err and len(errors) <= 1, err
    return code, errors[0] if errors else ""


# ----------------------------------------------------------------------------- the one owner
def test_owned_folder_rules(tmp_path):
    from poolsieve.core.owned_folders import check_owned, remove_owned, replace_owned

    ws = tmp_path / "ws"
    run_dir = ws / "runs" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "train_config.json").write_text("{}")
    (run_dir / "out.log").write_text("x")
    victim = user_folder(tmp_path / "victim")
    before = tree(victim)
    assert not check_owned(ws / "runs" / "missing", ("train_config.json",), inside=ws)
    (ws / "runs" / "empty").mkdir()
    assert remove_owned(ws / "runs" / "empty", ("train_config.json",), inside=ws)
    cases = {
        victim: "holds no train_config.json",
        ws / "runs" / "link": "is a symlink",
        ws / "runs" / "file": "is not a folder",
        ws: "lies outside",  # the workspace itself is not a folder inside it
    }
    (ws / "runs" / "link").symlink_to(victim)
    (ws / "runs" / "file").write_text("x")
    for folder, why in cases.items():
        with pytest.raises(PoolsieveError, match=why):
            remove_owned(folder, ("train_config.json",), inside=ws if folder != victim else None, what="run folder")
    (ws / "runs" / "up").symlink_to(tmp_path)  # a real folder reached through a symlinked parent
    (tmp_path / "train_config.json").write_text("{}")
    with pytest.raises(PoolsieveError, match="lies outside"):
        remove_owned(ws / "runs" / "up" / "victim", ("notes.txt",), inside=ws)
    # a record that is a symlink to a file is not a record
    (victim / "train_config.json").symlink_to(run_dir / "train_config.json")
    with pytest.raises(PoolsieveError, match="holds no train_config.json"):
        remove_owned(victim, ("train_config.json",))
    (victim / "train_config.json").unlink()
    assert tree(victim) == before
    assert remove_owned(run_dir, ("train_config.json",), inside=ws) and not run_dir.exists()
    staging = tmp_path / "ws" / "runs" / ".new"
    staging.mkdir()
    (staging / "train_config.json").write_text("new")
    replace_owned(staging, ws / "runs" / "b", ("train_config.json",), inside=ws)
    assert (ws / "runs" / "b" / "train_config.json").read_text() == "new"


# ----------------------------------------------------------------------------------- finding 2
def test_train_overwrite_never_removes_a_users_folder(tmp_path, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    victim = user_folder(tmp_path / "victim")
    before = tree(victim)
    # the command: the data folder does not exist; the victim used to be gone before that was found
    code, err = run(capsys, "train", "-w", str(ws), "--data", str(tmp_path / "missing"), "--output", str(victim),
                    "--overwrite")
    assert code == 2 and "training data folder does not exist" in err and tree(victim) == before
    # good data, but the output folder is not a run poolsieve wrote
    data = tmp_path / "data"
    write_wds(data, 8, seed=1, per_shard=8)
    code, err = run(capsys, "train", "-w", str(ws), "--data", str(data), "--output", str(victim), "--overwrite",
                    "--samples-seen", "32", "--batch-size", "8")
    assert code == 2 and "victim: holds no train_config.json or summary.json or train_data.txt" in err, err
    assert tree(victim) == before
    # data with no samples: refused before anything is removed, even from a run folder poolsieve wrote
    run_dir = ws / "runs" / "mine"
    run_dir.mkdir(parents=True)
    (run_dir / "train_config.json").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "00000000.tar").write_bytes(b"\0" * 1024)
    (empty / "00000000_stats.json").write_text(json.dumps({"successes": 0}))
    code, err = run(capsys, "train", "-w", str(ws), "--data", str(empty), "--output", str(run_dir), "--overwrite")
    assert code == 2 and "training shards hold no samples" in err and (run_dir / "train_config.json").exists()


@pytest.mark.parametrize("name", ["../subsets", "../../outside", "..", ".", "a/b", "two\nlines", "\x1b]52;c;eA==\x07"])
def test_train_names_outside_the_rule_delete_nothing(tmp_path, capsys, name):
    ws = tmp_path / "ws"
    subsets = user_folder(ws / "subsets")
    outside = user_folder(tmp_path / "outside")
    write_wds(ws / "filtered" / "good", 8, seed=1, per_shard=8)
    good_run = ws / "runs" / "good"
    good_run.mkdir(parents=True)
    (good_run / "train_config.json").write_text("{}")
    before = tree(tmp_path)
    # the bad name comes second: it is still refused before the first subset's run is touched
    code, err = run(capsys, "train", "-w", str(ws), "--subset", "good", "--subset", name, "--overwrite", *TINY)
    assert code == 2 and "subset name" in err and "is not allowed" in err, err
    assert "\x1b" not in err and "\x07" not in err
    assert tree(tmp_path) == before and (subsets / "notes.txt").exists() and (outside / "notes.txt").exists()


def test_train_overwrite_through_a_symlinked_run_folder_refused(tmp_path, capsys):
    ws = tmp_path / "ws"
    write_wds(ws / "filtered" / "x", 8, seed=1, per_shard=8)
    victim = user_folder(tmp_path / "victim")
    (victim / "train_config.json").write_text("{}")  # even a folder that looks like a run
    before = tree(victim)
    (ws / "runs").mkdir()
    (ws / "runs" / "x").symlink_to(victim)
    code, err = run(capsys, "train", "-w", str(ws), "--subset", "x", "--overwrite", "--samples-seen", "32",
                    "--batch-size", "8")
    assert code == 2 and "runs/x: is a symlink" in err, err
    assert tree(victim) == before


# ------------------------------------------------------------------------------------- evaluate
def test_evaluate_overwrite_refuses_a_users_folder(tmp_path, capsys):
    ws = tmp_path / "ws"
    (ws / "runs" / "x").mkdir(parents=True)
    (ws / "runs" / "x" / "summary.json").write_text(json.dumps({"model": "poolsieve-tiny",
                                                                "checkpoint": "missing.pt"}))
    victim = user_folder(tmp_path / "victim")
    before = tree(victim)
    (ws / "evals").mkdir()
    (ws / "evals" / "x").symlink_to(victim)
    code, err = run(capsys, "evaluate", "-w", str(ws), "--subset", "x", "--overwrite")
    assert code == 2 and "evals/x: is a symlink" in err, err
    code, err = run(capsys, "evaluate", "-w", str(ws), "--model", "poolsieve-tiny", "--output", str(victim),
                    "--overwrite", "--synthetic-samples", "8")
    assert code == 2 and "victim: holds no summary.json or eval_results.jsonl or other_results.jsonl" in err, err
    code, err = run(capsys, "evaluate", "-w", str(ws), "--subset", "../runs/x", "--overwrite")
    assert code == 2 and "subset name '../runs/x' is not allowed" in err, err
    assert tree(victim) == before


# --------------------------------------------------------------------------------- train-scorer
def test_train_scorer_replaces_only_its_own_seed_folder_and_weights(tmp_path, capsys):
    from test_seed_scorer import make_pool, write_pairs

    ws = make_pool(tmp_path / "ws")
    pairs = write_pairs(tmp_path / "pairs", 4)
    victim = user_folder(tmp_path / "victim")
    write_wds(victim / "shards", 4, seed=2, per_shard=4)
    (victim / "00000000.tar").write_bytes((victim / "shards" / "00000000.tar").read_bytes())
    before = tree(victim)
    (ws.root / "seeds").mkdir()
    (ws.root / "seeds" / "scorer").symlink_to(victim)
    code, err = run(capsys, "train-scorer", "-w", str(ws.root), "--seed", str(pairs), *TINY)
    assert code == 2 and "seeds/scorer: is a symlink" in err, err
    assert tree(victim) == before
    # --out naming a user's file: refused before any training
    (ws.root / "seeds" / "scorer").unlink()
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"my own model, not a poolsieve export")
    code, err = run(capsys, "train-scorer", "-w", str(ws.root), "--seed", str(pairs), "--out", str(mine), *TINY)
    assert code == 2 and "mine.pt: exists and is not a scorer weights file poolsieve wrote" in err, err
    assert mine.read_bytes() == b"my own model, not a poolsieve export" and not (ws.root / "runs").exists()


# -------------------------------------------------------------------------------------- inspect
@pytest.mark.parametrize("kind", ["symlink", "users folder"])
def test_inspect_never_writes_its_report_over_a_users_folder(tmp_path, capsys, kind):
    from test_inspect import make_scored_workspace

    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    victim = user_folder(tmp_path / "victim")
    if kind == "symlink":
        ws.report_dir.symlink_to(victim)
    else:
        victim = user_folder(ws.report_dir)
        (victim / "index.html").unlink()
    before = tree(victim)
    code, err = run(capsys, "inspect", "-w", str(ws.root), "--html")
    assert code == 2 and "report: " in err and ("is a symlink" if kind == "symlink" else "holds no summary.json") \
        in err, err
    assert tree(victim) == before


def test_download_overwrite_removes_only_the_files_a_download_writes(tmp_path):
    """``download --overwrite`` starts again: shard files and records go, a user's notes and folders stay,
    and a symlink is removed without touching its target."""
    shards = tmp_path / "shards"
    shards.mkdir()
    own = ["00000.tar", "00000.parquet", "00000_stats.json", "00017.tar", STATE_NAME,
           "download_report.json", "download_failures.parquet", ".download_runner.log"]
    for name in own:
        (shards / name).write_bytes(b"x")
    kept = ["notes.txt", "00000.tar.bak", "a00001.tar", "00001.tar.json"]
    for name in kept:
        (shards / name).write_text("mine")
    (shards / "photos").mkdir()
    (shards / "photos" / "00002.tar").write_text("mine")
    target = tmp_path / "outside.tar"
    target.write_text("precious")
    (shards / "00003.tar").symlink_to(target)
    assert remove_own_files(shards) == len(own) + 1
    assert sorted(p.name for p in shards.iterdir()) == sorted([*kept, "photos"])
    assert (shards / "photos" / "00002.tar").read_text() == "mine" and target.read_text() == "precious"
