"""``inspect --labels FILE`` attaches a user's own labels to the report (issue 26, item 5). The file is
hostile: checked uids, a bounded size, a regular file, escaped text; every problem is one line naming
the file, exit 2, and a report already written stays as it was."""

from __future__ import annotations

import json
import os
import re
import threading

import numpy as np
import pandas as pd
import pytest
from test_inspect import make_scored_workspace

from poolsieve.pipeline.cli import main
from poolsieve.pipeline.inspect import user_labels

CATEGORIES = ("animal", "vehicle", "plant", "logo")


def labels_frame(n: int = 150) -> pd.DataFrame:
    """Labels of the first ``n`` of make_scored_workspace's 200 pairs: a category and a quality each."""
    return pd.DataFrame({"uid": [f"{i:032x}" for i in range(n)], "category": [CATEGORIES[i % 4] for i in range(n)],
                         "quality": ["bad" if i % 5 == 0 else "good" for i in range(n)]})


def inspect(ws, *extra: str) -> int:
    return main(["inspect", "-w", str(ws.root), "--executor", "local", *extra])


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_labels_file_is_shown_in_the_report(tmp_path, capsys, kind):
    ws, _, top = make_scored_workspace(tmp_path / "ws")
    path = tmp_path / f"my labels.{kind}"
    frame = labels_frame()
    frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path)
    assert inspect(ws, "--html", "--labels", str(path)) == 0
    out = capsys.readouterr().out
    assert f"labels     my labels.{kind}: 150 rows, column(s) category, quality" in out
    page = (ws.report_dir / "index.html").read_text()
    # the label table counts the first column; unlabelled sampled pairs (150..189) are a row of their own
    assert "<th>category</th>" in page and "<td>(no label)</td><td class=\"num\">40</td>" in page
    for c in CATEGORIES:
        assert f"<td>{c}</td>" in page
    assert f"Labels from your file my labels.{kind} (column(s) category, quality; 150 rows): 150 of the 190" in page
    cards = re.findall(r'<div class="label">label: (.*?)</div>', page)  # both columns named on the cards
    assert cards and all(re.fullmatch(r"category: (animal|vehicle|plant|logo); quality: (good|bad)", c) for c in cards)
    summary = json.loads((ws.report_dir / "summary.json").read_text())
    assert summary["labels"] == {"file": f"my labels.{kind}", "columns": ["category", "quality"], "rows": 150}
    assert str(tmp_path) not in page and str(tmp_path) not in json.dumps(summary)  # the file's name only
    # the share each subset keeps per label: the subset top's members among the sampled animal pairs
    animal = [i for i in range(150) if i % 4 == 0]
    kept = sum(f"{i:032x}" in set(top) for i in animal) / len(animal)
    assert f"<td>animal</td><td class=\"num\">{len(animal)}</td><td class=\"num\">{kept:.0%}</td>" in page


def test_labels_without_html_are_checked_and_counted(tmp_path, capsys):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    path = tmp_path / "l.csv"
    labels_frame(20).to_csv(path, index=False)
    assert inspect(ws, "--json", "--labels", str(path)) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["labels"] == {"file": "l.csv", "columns": ["category", "quality"], "rows": 20}
    assert not ws.report_dir.exists()


def write(path, text: str) -> None:
    path.write_text(text)


BAD_CSV = [
    ("uid,category\n" + "0" * 32 + ",a\nnot-a-uid,b\n", "row 2: uid 'not-a-uid' is not 32 lowercase hex characters"),
    ("id,category\n" + "0" * 32 + ",a\n", "no uid column (columns: id, category)"),
    ("uid\n" + "0" * 32 + "\n", "no label column beside uid"),
    ("uid,text\n" + "0" * 32 + ",a\n", "label column 'text' has the name of a column the report reads"),
    ("uid,a,a\n" + "0" * 32 + ",x,y\n", "two label columns have the same name"),
    ("uid,c\n" + "0" * 32 + ",a\n" + "0" * 31 + "1,b,extra\n", "not a readable CSV file (CSV parse error"),
    (f"uid,c\n{0:032x},a\n{1:032x},b\n{0:032x},c\n", f"uid {0:032x} is labelled twice (rows 1 and 3)"),
    ("uid," + ",".join(f"c{i}" for i in range(17)) + "\n", "17 label columns; the report shows at most 16"),
    ("", "not a readable CSV file (Empty CSV file"),
]


@pytest.mark.parametrize("text,problem", BAD_CSV)
def test_bad_labels_files_are_one_line_naming_the_file_and_keep_the_report(tmp_path, capsys, text, problem):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    assert inspect(ws, "--html") == 0
    before = (ws.report_dir / "index.html").read_bytes()
    path = tmp_path / "labels.csv"
    write(path, text)
    capsys.readouterr()
    assert inspect(ws, "--html", "--labels", str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"poolsieve inspect: error: {path}: " + err.split(f"{path}: ", 1)[1] and problem in err, err
    assert len(err.splitlines()) == 1
    assert (ws.report_dir / "index.html").read_bytes() == before  # nothing already written is lost


def test_other_bad_files(tmp_path, capsys, monkeypatch):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    cases = []
    (tmp_path / "l.json").write_text("{}")
    cases.append((tmp_path / "l.json", "a labels file is a parquet (.parquet, .pq) or CSV (.csv) table"))
    (tmp_path / "fake.parquet").write_text("uid,category\n")
    cases.append((tmp_path / "fake.parquet", "not a readable parquet file"))
    (tmp_path / "folder.csv").mkdir()
    cases.append((tmp_path / "folder.csv", "is a folder, not a regular file"))
    cases.append((tmp_path / "missing.csv", "does not exist"))
    big = tmp_path / "big.csv"
    labels_frame().to_csv(big, index=False)
    cases.append((big, "labels file is 0.0 GiB, over the 0 GiB inspect reads"))
    monkeypatch.setattr(user_labels, "MAX_BYTES", 1000)
    for path, problem in cases:
        assert inspect(ws, "--html", "--labels", str(path)) == 2
        err = capsys.readouterr().err.strip()
        assert f"{path}: " in err and problem in err and len(err.splitlines()) == 1, (path, err)


def test_a_fifo_labels_file_is_refused_without_waiting(tmp_path, capsys):
    """A FIFO would hang a plain open() until someone writes to it; it is refused at once."""
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(inspect(ws, "--html", "--labels", str(fifo))), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # the attack worked: unblock the reader so the test process can end
        with open(fifo, "w") as f:
            f.write("uid,c\n")
        worker.join(10)
        pytest.fail("inspect blocked on a FIFO labels file")
    assert result == [2] and "is a FIFO, not a regular file" in capsys.readouterr().err


def test_label_text_from_the_file_is_escaped_in_the_page(tmp_path):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    path = tmp_path / "l.csv"
    pd.DataFrame({"uid": [f"{i:032x}" for i in range(190)], "<img src=x onerror=alert(1)>":
                  ["<script>alert(2)</script>"] * 190}).to_csv(path, index=False)
    assert inspect(ws, "--html", "--labels", str(path)) == 0
    page = (ws.report_dir / "index.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_only_sampled_rows_are_kept_from_a_large_file(tmp_path):
    """20,000 rows in the file, 190 pool pairs: the labels kept are the sampled pairs' only."""
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    rng = np.random.default_rng(0)
    others = [f"{u:032x}" for u in rng.integers(1 << 40, 1 << 60, 20_000 - 190)]
    frame = pd.DataFrame({"uid": [f"{i:032x}" for i in range(190)] + others, "category": "x"})
    path = tmp_path / "many.parquet"
    frame.to_parquet(path, row_group_size=4096)
    wanted = {f"{i:032x}" for i in range(0, 190, 2)}
    labels = user_labels.read_labels(path, wanted)
    assert labels.rows == 20_000 and sorted(labels.frame["uid"]) == sorted(wanted)
