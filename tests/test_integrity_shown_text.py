"""Issue 23, finding 12: names and texts from outside never act on the person reading them.

* ``filter --name $'two\\nlines'`` or a name holding terminal escapes (``ESC [2J``, OSC 52) is refused in
  one line that shows the name escaped (``core/names.py``), and no file of that name is written.
* ``inspect`` prints the names of someone else's workspace (subsets, runs, evaluations, their tasks)
  escaped (``core/shown_text.for_terminal``); so do every error and warning line of the CLI.
* The HTML report shows a bidirectional control (U+202E: "gnp.exe") as a visible ``[U+202E]`` mark, and
  what it writes into ``alt=`` and ``title=`` is at most 300 characters.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

import pandas as pd
import pytest
from factories import make_samples, write_img2dataset_shards
from test_inspect import make_scored_workspace

from poolsieve.core.formats import write_subset
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import cli

RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066")  # never on the terminal as they are
ESCAPES = {"clear screen": "\x1b[2J", "OSC 52 clipboard": "\x1b]52;c;ZXZpbA==\x07", "newline": "two\nlines",
           "right-to-left override": "photo\u202egnp.exe", "C1 CSI": "a\x9b31mred"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--executor", "local"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert not any(ch in text for ch in RAW), ascii(text)


@pytest.mark.parametrize("case", list(ESCAPES))
def test_filter_refuses_names_with_control_characters(tmp_path, capsys, case):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    name = ESCAPES[case]
    before = sorted(p.name for p in ws.subsets_dir.iterdir())
    for argv in (["--spec", "clip_score(fraction=0.5)", "--name", name],  # --name
                 ["--spec", json.dumps({name: "clip_score(fraction=0.5)"})]):  # a name in an inline mapping
        code, out, err = run(capsys, "filter", "-w", str(ws.root), *argv)
        errors = [line for line in err.splitlines() if line]
        assert code == 2 and len(errors) == 1 and "subset name" in errors[0] and "is not allowed" in errors[0], err
        assert ascii(name)[1:-1] in errors[0]  # shown escaped, e.g. \x1b[2J
        assert_clean(out, err)
    assert sorted(p.name for p in ws.subsets_dir.iterdir()) == before


def test_inspect_prints_a_foreign_workspaces_names_escaped(tmp_path, capsys):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    shutil.copy(ws.subset_path("top"), ws.subsets_dir / "\x1b[2Jevil\u202e.npy")
    (ws.subsets_dir / "broken\x1b]52;c;eA==\x07.npy").write_bytes(b"not a subset")
    run_dir = ws.run_dir("run\x1b]52;c;ZXZpbA==\x07")
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"samples_seen": 64}))
    ev = ws.eval_dir("\x1b[31mred\u2066")
    ev.mkdir(parents=True)
    (ev / "eval_results.jsonl").write_text(json.dumps(
        {"key": "cars", "dataset": "Cars\x1b[2J\u202e", "metrics": {"main_metric": 0.5}}) + "\n")
    code, out, err = run(capsys, "inspect", "-w", str(ws.root))
    assert code == 2, err  # the broken subset fails the command once everything is shown
    assert_clean(out, err)
    assert "\\x1b[2Jevil\\u202e: " in out and "run\\x1b]52;c;ZXZpbA==\\x07: done" in out
    assert "\\x1b[31mred\\u2066: Cars\\x1b[2J\\u202e=0.500" in out
    assert "broken\\x1b]52;c;eA==\\x07.npy" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "inspect", "-w", str(ws.root), "--json")
    assert_clean(out)  # JSON escapes them itself


def test_inspect_reports_a_bad_eval_line_in_one_line(tmp_path, capsys):
    """Finding 11 for inspect: a list-valued key is one error naming the file and line, not a traceback."""
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    ev = ws.eval_dir("top")
    ev.mkdir(parents=True)
    (ev / "eval_results.jsonl").write_text(
        json.dumps({"key": "cars", "dataset": "Cars", "metrics": {"main_metric": 0.5}}) + "\n"
        + json.dumps({"key": ["x"], "dataset": "Cars", "metrics": {"main_metric": 0.5}}) + "\n")
    for extra in ([], ["--html"]):
        code, out, err = run(capsys, "inspect", "-w", str(ws.root), *extra)
        assert code == 2 and "Traceback" not in err, err
        assert err.strip() == (f"poolsieve inspect: error: {ev}/eval_results.jsonl: line 2: 'key' must be a "
                               "non-empty string, got list")
        assert "subset     top: " in out  # everything else is still shown


class _Attributes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[str]] = {"alt": [], "title": []}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in self.values:
                self.values[key].append(value or "")

    def handle_data(self, data):
        self.text.append(data)


def test_report_marks_bidi_controls_and_bounds_attributes(tmp_path):
    from poolsieve.pipeline.inspect.report import write_report
    from poolsieve.pipeline.inspect.stage import inspect_workspace

    ws = Workspace.create(tmp_path / "ws")
    samples = make_samples(24, seed=3, image_size=32)
    samples[0].caption = "holiday photo \u202egnp.exe"
    samples[1].caption = "a long caption " + "x" * 100_000
    samples[2].caption = "isolate \u2066abc\u2069 and mark \u200f \u061c"
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=24)
    ws.scores_dir.mkdir()
    pd.DataFrame({"uid": [s.uid for s in samples], "key": [f"00000{i:04d}" for i in range(24)],
                  "text": [s.caption for s in samples], "status": "success",
                  "clip_b32_similarity_score": [0.1 + i / 100 for i in range(24)]}).to_parquet(ws.score_table_path("00000"))
    write_subset(ws.subset_path("odd\u202e"), uids_to_pairs(sorted(s.uid for s in samples[:3])))
    page = write_report(ws, inspect_workspace(ws)).read_text()
    for ch in ("\u202e", "\u2066", "\u2069", "\u200f", "\u061c"):
        assert ch not in page, ascii(ch)
    parsed = _Attributes()
    parsed.feed(page)
    shown = "".join(parsed.text)
    assert "holiday photo [U+202E]gnp.exe" in shown and "odd[U+202E]" in shown
    assert "isolate [U+2066]abc[U+2069] and mark [U+200F] [U+061C]" in shown
    alts, titles = parsed.values["alt"], parsed.values["title"]
    assert any("x" * 200 in v for v in alts) and any("x" * 200 in v for v in titles)  # the long caption's card
    assert max(len(v) for v in alts + titles) <= 300
    assert all(v.endswith("…") for v in alts + titles if len(v) == 300)
    assert "x" * 301 not in page and len(page) < 400_000


def test_inspect_refuses_an_eval_file_that_is_a_fifo(tmp_path, capsys):
    """An eval file that is not a regular file is refused in one line; a FIFO never blocks the reader."""
    import os

    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    ev = ws.eval_dir("top")
    ev.mkdir(parents=True)
    os.mkfifo(ev / "eval_results.jsonl")
    code, _, err = run(capsys, "inspect", "-w", str(ws.root))
    assert code == 2 and err.strip() == (f"poolsieve inspect: error: {ev}/eval_results.jsonl: is a FIFO, not a "
                                         "regular file; poolsieve reads and writes only regular files here")


@pytest.mark.parametrize("case", ["newline", "clear screen"])
def test_score_refuses_a_reference_name_with_control_characters(tmp_path, capsys, case):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    (tmp_path / "ref").mkdir()
    code, out, err = run(capsys, "score", "-w", str(ws.root), "--reference", str(tmp_path / "ref"),
                         "--name", ESCAPES[case])
    errors = [line for line in err.splitlines() if line]
    assert code == 2 and len(errors) == 1 and "reference set name" in errors[0], err
    assert_clean(out, err)
    assert not ws.references_dir.exists() or not any(ws.references_dir.iterdir())
