"""Issue 23, findings 3, 4 and 11, and issue 25's partial upload: ``submit`` publishes only what it checked.

* ``--out EXISTING`` never replaces a folder that is not a previous submission; ``--subset ../../X`` is refused.
* A symlink in ``evals/NAME/`` (to a secret file, to a folder, a loop) is never copied into the folder the
  user uploads; a results file that is a symlink, or ``evals/NAME`` itself as a symlink, is refused.
* Every line of ``eval_results.jsonl`` is checked before it is copied anywhere.
* DataComp's upload folder is written from an evaluation of all 38 tasks, or with ``--allow-incomplete``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from factories import tree
from test_submit import LOCAL, sorted_pairs, uid

from poolsieve.core.errors import ConfigError, InputError, PoolsieveError
from poolsieve.core.formats import write_subset
from poolsieve.core.workspace import Workspace
from poolsieve.eval.tasks import DATACOMP_TASKS
from poolsieve.pipeline import cli
from poolsieve.pipeline.submit import SubmitConfig, run_submit

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for upload\n"


@pytest.fixture
def ws(tmp_path):
    """A scored pool of 20 uids (``uid(0..19)``) in two tables."""
    w = Workspace.create(tmp_path / "pool")
    w.scores_dir.mkdir()
    for shard in range(2):
        rows = range(10 * shard, 10 * shard + 10)
        pd.DataFrame({"uid": [uid(i) for i in rows], "clip_b32_similarity_score": [i / 20 for i in rows],
                      "status": ["success"] * 10}).to_parquet(w.scores_dir / f"{shard:05d}.parquet")
    return w


def submit(ws, **kw):
    overwrite = kw.pop("overwrite", False)
    return run_submit(ws, SubmitConfig(**kw), LOCAL, overwrite=overwrite)


def lines_file(folder: Path, lines: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "eval_results.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def all_tasks(value: float = 0.5) -> list[dict]:
    return [{"key": t.key, "dataset": t.name, "metrics": {"main_metric": value if t.main_metric else None}}
            for t in DATACOMP_TASKS]


def cli_submit(ws, capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["submit", "-w", str(ws.root), "--executor", "local", *argv])
    return code, capsys.readouterr().err


def one_error(err: str) -> str:
    """The command's one error line (progress lines aside), with no traceback and no raw escape."""
    errors = [line for line in err.splitlines() if line.startswith("poolsieve submit: error: ")]
    assert len(errors) == 1 and "Traceback" not in err and "\x1b" not in err, err
    return errors[0]


# ------------------------------------------------------------------------------------- finding 3
def test_out_never_replaces_a_folder_that_is_not_a_submission(ws, tmp_path, capsys):
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2]))
    user = tmp_path / "mine"
    (user / "photos").mkdir(parents=True)
    (user / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (user / "notes.txt").write_text("my notes\n")
    before = tree(user)
    for overwrite in (False, True):
        with pytest.raises(PoolsieveError, match=r"mine: holds no submission\.json; poolsieve removes or replaces "
                                                 r"only a submission folder it wrote"):
            submit(ws, subset="s", out=str(user), overwrite=overwrite)
        assert tree(user) == before
    code, err = cli_submit(ws, capsys, "--subset", "s", "--out", str(user), "--overwrite")
    assert code == 2 and "holds no submission.json" in one_error(err)
    assert tree(user) == before and not list(tmp_path.glob(".mine.*"))
    # a file in its place, or a symlink to a folder, is refused the same way
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PoolsieveError, match="afile: is not a folder"):
        submit(ws, subset="s", out=str(tmp_path / "afile"))
    (tmp_path / "link").symlink_to(user)
    with pytest.raises(PoolsieveError, match="link: is a symlink"):
        submit(ws, subset="s", out=str(tmp_path / "link"))
    assert tree(user) == before


def test_out_replaces_a_previous_submission(ws, tmp_path):
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2]))
    out = tmp_path / "sub"
    submit(ws, subset="s", out=str(out))
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2, 3]))
    with pytest.raises(ConfigError, match="another uid file"):
        submit(ws, subset="s", out=str(out))
    assert submit(ws, subset="s", out=str(out), overwrite=True)["count"] == 3
    assert json.loads((out / "submission.json").read_text())["count"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sub.") and p.is_dir()] == []


@pytest.mark.parametrize("name", ["../../X", "../subsets", "a/b", "two\nlines", "\x1b[2Jclear", ".hidden"])
def test_subset_names_outside_the_rule_refused(ws, name, capsys):
    outside = ws.root.parent
    before = sorted(p.name for p in outside.iterdir())
    with pytest.raises(ConfigError, match="subset name .* is not allowed"):
        submit(ws, subset=name)
    code, err = cli_submit(ws, capsys, "--subset", name)
    assert code == 2 and "is not allowed" in one_error(err)
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not (ws.root / "submissions" / "s").exists()


# ------------------------------------------------------------------------------------- finding 4
def test_symlinks_in_the_evaluation_are_never_published(ws, tmp_path, capsys):
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2]))
    secret_dir = tmp_path / "home" / ".ssh"
    secret_dir.mkdir(parents=True)
    (secret_dir / "id_ed25519").write_bytes(SECRET)
    ev = ws.eval_dir("s")
    lines_file(ev, all_tasks()[:2])
    (ev / "summary.json").write_text("{}\n")
    (ev / "notes").mkdir()
    (ev / "notes" / "ok.txt").write_text("kept\n")
    (ev / "key").symlink_to(secret_dir / "id_ed25519")
    (ev / "ssh").symlink_to(secret_dir)
    (ev / "loop").symlink_to(ev / "loop")
    (ev / "notes" / "up").symlink_to(ev)
    os.mkfifo(ev / "fifo")
    code, err = cli_submit(ws, capsys, "--subset", "s")
    assert code == 0, err
    published = tree(ws.root / "submissions" / "s")
    assert sorted(published) == ["eval", "eval/eval_results.jsonl", "eval/notes", "eval/notes/ok.txt",
                                 "eval/summary.json", "s.npy", "s.npy.sha256", "submission.json"]
    assert not any(SECRET in (data or b"") for data in published.values())
    left_out = [line for line in err.splitlines() if "left out of the submission" in line]
    assert len(left_out) == 5 and all(line.startswith("poolsieve: warning: ") for line in left_out)
    assert "key (a symlink)" in err and "fifo (not a regular file)" in err


def test_results_file_or_evaluation_folder_as_symlink_refused(ws, tmp_path):
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2]))
    elsewhere = lines_file(tmp_path / "elsewhere", all_tasks()[:2])
    ev = ws.eval_dir("s")
    ev.mkdir(parents=True)
    (ev / "eval_results.jsonl").symlink_to(elsewhere)
    with pytest.raises(InputError, match=r"s/eval_results.jsonl: is a symlink, not a regular file"):
        submit(ws, subset="s")
    (ev / "eval_results.jsonl").unlink()
    os.mkfifo(ev / "eval_results.jsonl")
    with pytest.raises(InputError, match=r"s/eval_results.jsonl: is a FIFO, not a regular file"):
        submit(ws, subset="s")
    (ev / "eval_results.jsonl").unlink()
    ev.rmdir()
    ev.symlink_to(elsewhere.parent)
    with pytest.raises(InputError, match=r"evals/s: is a symlink; submit publishes only"):
        submit(ws, subset="s")
    assert not (ws.root / "submissions" / "s").exists()


# ------------------------------------------------------------------------------------ finding 11
METRIC = r"line 2: 'main_metric' must be a finite number or null, got "
BAD_LINES = {
    "list key": ({"key": ["a"], "dataset": "CIFAR-10"}, r"line 2: 'key' must be a non-empty string, got list"),
    "list dataset": ({"key": "cifar10", "dataset": ["x"]}, r"line 2: 'dataset' must be a non-empty string, got list"),
    "string metric": ({"main_metric": "not-a-number"}, METRIC + r"a str \('not-a-number'\)"),
    "NaN": ({"main_metric": float("nan")}, METRIC + "nan"),
    "inf": ({"main_metric": float("inf")}, METRIC + "inf"),
    "list metric": ({"main_metric": [1, 2]}, METRIC + r"a list \(\[1, 2\]\)"),
    "bool metric": ({"main_metric": True}, METRIC + r"a bool \(True\)"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_result_lines_refused_before_anything_is_written(ws, case, tmp_path, capsys):
    change, message = BAD_LINES[case]
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2]))
    lines = all_tasks()
    line = lines[1]
    line.update({k: v for k, v in change.items() if k != "main_metric"})
    if "main_metric" in change:
        line["metrics"] = {"main_metric": change["main_metric"]}
    lines_file(ws.eval_dir("s"), lines)
    code, err = cli_submit(ws, capsys, "--subset", "s", "--scale", "small", "--allow-incomplete")
    assert code == 2 and re.search(r"evals/s/eval_results.jsonl: " + message, one_error(err)), err
    assert not (ws.root / "submissions" / "s").exists()


# ------------------------------------------------------------------------------ issue 25: upload
def test_upload_folder_only_from_a_complete_evaluation(ws, capsys):
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2]))
    lines_file(ws.eval_dir("s"), all_tasks()[:5])
    ws.run_dir("s").mkdir(parents=True)
    (ws.run_dir("s") / "summary.json").write_text(json.dumps({"scale": "small"}))
    code, captured = cli.main(["submit", "-w", str(ws.root), "--executor", "local", "--subset", "s"]), capsys.readouterr()
    folder = ws.root / "submissions" / "s"
    assert code == 0 and (folder / "eval" / "eval_results.jsonl").exists()
    assert not (folder / "small_scale").exists()
    warning = [line for line in captured.err.splitlines() if "upload folder" in line]
    assert len(warning) == 1 and "lacks 33 of DataComp's 38 tasks" in warning[0], captured.err
    missing = [t.key for t in DATACOMP_TASKS[5:] if t.main_metric]
    assert ", ".join(missing) in warning[0] and "--allow-incomplete" in warning[0]
    assert "incomplete evaluation: 33 of 38 tasks missing" in captured.out
    assert json.loads((folder / "submission.json").read_text())["datacomp_upload"] is None
    out = submit(ws, subset="s", allow_incomplete=True, overwrite=True)
    assert out["datacomp_upload"] == "small_scale" and (folder / "small_scale" / "results.jsonl").exists()


def test_unknown_scale_refused(ws):
    write_subset(ws.subset_path("s"), sorted_pairs([1, 2]))
    lines_file(ws.eval_dir("s"), all_tasks())
    ws.run_dir("s").mkdir(parents=True)
    (ws.run_dir("s") / "summary.json").write_text(json.dumps({"scale": "../../../x"}))
    with pytest.raises(ConfigError, match=r"runs/s/summary.json: unknown scale '../../../x'"):
        submit(ws, subset="s")
    with pytest.raises(ConfigError, match=r"--scale: unknown scale 'huge'"):
        submit(ws, subset="s", scale="huge")
    assert not (ws.root / "submissions" / "s").exists() and not (ws.root.parent / "x_scale").exists()
