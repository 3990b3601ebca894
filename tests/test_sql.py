"""poolsieve sql: the README's three questions answered on a workspace made the quickstart's way, results
printed or written, and a query that is malformed, needs the missing extra, or reaches for a file outside
what poolsieve registered is one line, exit 2."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scored_workspace as sw

import poolsieve.api as ps
from poolsieve.core.errors import ConfigError
from poolsieve.core.formats import read_score_table, read_subset
from poolsieve.core.uids import pairs_to_uids
from poolsieve.pipeline import cli

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return sw.shared(tmp_path_factory)


def sql(ws, *argv: str) -> int:
    return cli.main(["sql", "-w", str(ws.root), *argv])


def readme_questions() -> list[list[str]]:
    """The ``poolsieve sql -w poolsieve-quickstart ...`` commands of the README, split as a shell splits them."""
    lines = re.findall(r"^poolsieve sql -w poolsieve-quickstart .*$", README.read_text(), flags=re.M)
    return [shlex.split(line)[4:] for line in lines]


def members(ws) -> pd.DataFrame:
    full = pd.concat([read_score_table(t) for t in ws.score_tables()], ignore_index=True)
    return full[full["status"] == "success"]


def subset(ws, name: str) -> set[str]:
    return set(pairs_to_uids(read_subset(ws.subset_path(name))))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_the_readme_answers_its_three_questions(ws, tmp_path):
    questions = readme_questions()
    assert len(questions) == 3
    answers = []
    for i, argv in enumerate(questions):
        out = tmp_path / f"answer{i}.parquet"
        argv = [a for j, a in enumerate(argv) if a != "--out" and (j == 0 or argv[j - 1] != "--out")]
        assert sql(ws, *argv, "--out", str(out)) == 0
        answers.append(pd.read_parquet(out))
    pool, clip, basic = members(ws), subset(ws, "clip30"), subset(ws, "basic")

    per_language = answers[0].set_index("language")  # score quantiles per language
    for language, rows in pool.groupby("language"):
        scores = rows[sw.COLUMN].to_numpy(np.float64)
        got = per_language.loc[language]
        assert got["pairs"] == len(rows)
        assert got[["p10", "p50", "p90"]].to_numpy() == pytest.approx(np.quantile(scores, [0.1, 0.5, 0.9]), abs=1e-3)
    assert set(per_language.index) == set(pool["language"])

    assert answers[1].to_dict("records") == [{"clip30_pairs": len(clip), "basic_drops": len(clip - basic)}]
    assert 0 < len(clip - basic) < len(clip)

    kept = pool[pool["uid"].isin(clip)].sort_values(sw.COLUMN).head(20)  # the 20 lowest-scoring kept pairs
    assert answers[2]["uid"].tolist() == kept["uid"].tolist()
    assert answers[2]["text"].tolist() == kept["text"].tolist()
    assert answers[2]["score"].to_numpy() == pytest.approx(kept[sw.COLUMN].to_numpy())


def test_a_result_is_printed_with_hostile_text_escaped(ws, capsys):
    assert sql(ws, "SELECT text FROM scores WHERE text LIKE '%script%'") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mred" in out and "rows  1" in out
    assert sql(ws, "SELECT uid FROM no_filter ORDER BY uid", "--max-rows", "3") == 0
    out = capsys.readouterr().out
    assert f"... {len(subset(ws, 'no_filter')) - 3:,} more rows" in out
    assert out.splitlines()[2] == sorted(subset(ws, "no_filter"))[0]


def test_the_scores_view_equals_the_api_table(ws, tmp_path):
    out = tmp_path / "all.parquet"
    assert sql(ws, "SELECT * FROM scores", "--out", str(out)) == 0
    got = pd.read_parquet(out).sort_values("uid").reset_index(drop=True)
    expected = ps.open(ws.root).to_pandas(membership=sorted(sw.SPECS)).sort_values("uid").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)  # the tables' pandas dtypes (Int32) stay behind


def test_csv_out_and_an_existing_file(ws, tmp_path, capsys):
    out = tmp_path / "clip30.csv"
    assert sql(ws, "SELECT uid FROM clip30 ORDER BY uid", "--out", str(out)) == 0
    assert set(pd.read_csv(out)["uid"]) == subset(ws, "clip30")
    capsys.readouterr()
    assert sql(ws, "SELECT 1 AS one", "--out", str(out)) == 2
    assert "exists; pass --overwrite" in one_line_error(capsys)
    assert sql(ws, "SELECT 1 AS one", "--out", str(out), "--overwrite") == 0
    assert out.read_text().split() == ['"one"', "1"]


@pytest.mark.parametrize("query, says", [
    ("SELEC count(*) FROM scores", "syntax error"),
    ("SELECT nonesuch FROM scores", "nonesuch"),
    ("SELECT * FROM clip31", "clip31"),
])
def test_a_malformed_query_is_one_line_exit_2(ws, capsys, query, says):
    assert sql(ws, query) == 2
    line = one_line_error(capsys)
    assert line.startswith("poolsieve sql: error: query failed:") and says in line


def test_without_duckdb_it_says_how_to_install_it(ws, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "duckdb", None)  # what `import duckdb` meets where the extra is missing
    assert sql(ws, "SELECT 1") == 2
    assert 'pip install "poolsieve[sql]"' in one_line_error(capsys)
    with pytest.raises(Exception, match=r"poolsieve\[sql\]"):
        ps.open(ws.root).sql("SELECT 1")


def test_a_query_reaches_no_file(ws, tmp_path, capsys):
    """DuckDB reads and writes any path it is given: every way of naming one is refused."""
    secret = tmp_path / "secret.csv"
    secret.write_text("token\nhunter2\n")
    table = ws.score_tables()[0]
    written = tmp_path / "written.csv"
    attempts = [
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM '{secret}'",
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT count(*) FROM read_parquet('{table}')",  # even the workspace's own files: only the views
        f"SELECT * FROM glob('{tmp_path}/*')",
        f"COPY (SELECT 1) TO '{written}'",
        f"ATTACH '{tmp_path / 'db.duckdb'}' AS other",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "INSTALL httpfs",
        "LOAD httpfs",
    ]
    for query in attempts:
        assert sql(ws, query) == 2, query
        line = one_line_error(capsys)
        assert line.startswith("poolsieve sql: error: query failed:") and "hunter2" not in line, (query, line)
    assert sorted(os.listdir(tmp_path)) == ["secret.csv"]


def test_python_variables_are_not_tables(ws):
    """DuckDB's Python client reads a variable of the caller's frames as a table when a query names it."""
    secret_frame = pd.DataFrame({"token": ["hunter2"]})  # noqa: F841 - what DuckDB would scan by name
    api = ps.open(ws.root)
    assert api.sql("SELECT count(*) AS n FROM scores").column("n").to_pylist() == [len(members(ws)) + 1]
    for query in ["SELECT * FROM secret_frame", "SET python_scan_all_frames = true; SELECT * FROM secret_frame"]:
        with pytest.raises(ConfigError, match="query failed") as refused:
            api.sql(query)
        assert "hunter2" not in str(refused.value)


def test_a_fifo_among_the_tables_is_refused_without_blocking(ws, tmp_path, capsys):
    work = sw.copy(ws, tmp_path / "ws")
    os.mkfifo(work.scores_dir / "00009.parquet")
    assert sql(work, "SELECT count(*) FROM scores") == 2
    assert "00009.parquet: is a FIFO" in one_line_error(capsys)


def test_subset_names_sql_cannot_tell_apart_are_left_out_with_a_warning(ws, tmp_path, capsys):
    work = sw.copy(ws, tmp_path / "ws")
    for name in ("Basic", "scores", "_score_tables"):
        for suffix in (".npy", ".json"):
            (work.subsets_dir / f"{name}{suffix}").write_bytes(work.subset_path("basic").with_suffix(suffix).read_bytes())
    assert sql(work, "SELECT count(*) AS n FROM scores WHERE in_scores AND in__score_tables") == 0
    captured = capsys.readouterr()
    assert f"\n{len(subset(ws, 'basic'))}\n" in captured.out
    assert "subset basic is left out of SQL" in captured.err and "subset scores has no view" in captured.err
    assert sql(work, 'SELECT count(*) AS n FROM "_score_tables"') == 0  # the subset's view: the name is free
