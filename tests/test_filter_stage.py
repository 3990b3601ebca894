"""`poolsieve filter`: spec forms, subset files and records, reruns, refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import ConfigError
from poolsieve.core.formats import read_subset, write_subset
from poolsieve.core.runtime import Runtime
from poolsieve.core.uids import SUBSET_DTYPE, uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.filters.pool_tables import pool_fingerprint
from poolsieve.filters.spec import parse_cli_spec
from poolsieve.pipeline import cli
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter

CAPTIONS = ["a photo of a dog playing in the park", "une photo de mon chat sur le canapé",
            "a red car parked on a quiet street", "ok"]


def uid(i: int) -> str:
    return f"{(7 * i + 3) % 97:016x}{i:016x}"


@pytest.fixture
def ws(tmp_path):
    """Two score tables, 20 rows: scores i/100 for i in 0..19; row 19 failed; captions cycle."""
    w = Workspace.create(tmp_path / "pool")
    w.scores_dir.mkdir()
    for shard, rows in enumerate([range(0, 10), range(10, 20)]):
        pd.DataFrame({
            "uid": [uid(i) for i in rows],
            "text": [CAPTIONS[i % 4] for i in rows],
            "original_width": [300] * len(rows),
            "original_height": [300] * len(rows),
            "clip_b32_similarity_score": [i / 100 for i in rows],
            "clip_l14_similarity_score": [(i % 5) / 10 for i in rows],
            "status": ["failed_to_decode" if i == 19 else "success" for i in rows],
        }).to_parquet(w.scores_dir / f"{shard:05d}.parquet")
    return w


def main(argv):
    """The real CLI entry point (it builds the filter subcommand alone)."""
    return cli.main(argv)


def pairs_of(indices) -> np.ndarray:
    return np.sort(uids_to_pairs([uid(i) for i in indices]), order=["f0", "f1"])


def make(ws, subsets, overwrite=False, **kw):
    return run_filter(ws, FilterConfig(subsets=subsets, **kw), Runtime(executor="local"), overwrite=overwrite)


def test_writes_subset_and_record(ws):
    out = make(ws, {"top": "clip_score(fraction=0.5)"})
    # 19 members, scores 0..18/100: int(19 * .5) = 9 -> threshold .09 -> rows 9..18
    got = read_subset(ws.subset_path("top"))
    assert got.dtype == SUBSET_DTYPE and np.array_equal(got, pairs_of(range(9, 19)))
    record = json.loads(ws.subset_info_path("top").read_text())
    assert record["count"] == 10 and record["pool"]["members"] == 19 and out["top"]["status"] == "made"
    assert record["spec"] == {"filter": "clip_score", "params": {"fraction": 0.5}}
    assert record["pool"]["fingerprint"] == pool_fingerprint(ws.score_tables())
    assert record["steps"][0]["details"]["threshold"] == 0.09
    assert record["expression"] == "clip_score(fraction=0.5)" and record["seconds"] >= 0


def test_and_or_not_and_saved_subsets(ws):
    make(ws, {"en": "basic", "clip": {"clip_score": {"threshold": 0.1}}})
    # English captions (0, 2 mod 4) that are long enough, members only
    assert np.array_equal(read_subset(ws.subset_path("en")), pairs_of([0, 2, 4, 6, 8, 10, 12, 14, 16, 18]))
    make(ws, {"en_clip": "en & clip", "rest": {"not": {"or": ["en", "clip"]}}})
    assert np.array_equal(read_subset(ws.subset_path("en_clip")), pairs_of([10, 12, 14, 16, 18]))
    assert np.array_equal(read_subset(ws.subset_path("rest")), pairs_of([1, 3, 5, 7, 9]))
    record = json.loads(ws.subset_info_path("en_clip").read_text())
    assert [i["subset"] for i in record["inputs"]] == ["en", "clip"]
    assert all(len(i["sha256"]) == 64 and i["outside_pool"] == 0 for i in record["inputs"])
    assert record["steps"][-1]["counts"] == [10, 5]


def test_rerun_skips_and_refuses_changed_spec(ws):
    make(ws, {"top": "clip_score(fraction=0.5)"})
    mtime = ws.subset_path("top").stat().st_mtime_ns
    assert make(ws, {"top": "clip_score(fraction=0.5)"})["top"]["status"].startswith("skipped")
    assert ws.subset_path("top").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="exists, made from another spec"):
        make(ws, {"top": "clip_score(fraction=0.2)"})
    make(ws, {"top": "clip_score(fraction=0.2)"}, overwrite=True)
    assert len(read_subset(ws.subset_path("top"))) == 4  # int(19 * .2) = 3 -> threshold .15


def test_defined_dependency_is_loaded_when_up_to_date(ws):
    make(ws, {"clip": "clip_score(threshold=0.1)"})
    out = make(ws, {"clip": "clip_score(threshold=0.1)", "both": "clip & basic"})
    assert out["clip"]["status"].startswith("skipped")
    record = json.loads(ws.subset_info_path("both").read_text())
    assert record["inputs"] == [{"subset": "clip", "up_to_date": True}]


def test_subset_from_another_pool_contributes_only_members(ws):
    foreign = np.concatenate([pairs_of([1, 2]), uids_to_pairs(["f" * 32])])
    write_subset(ws.subset_path("foreign"), foreign)
    make(ws, {"mine": "foreign | clip_score(threshold=0.18, allow_small=true)"})  # 1 row of 19, confirmed
    assert np.array_equal(read_subset(ws.subset_path("mine")), pairs_of([1, 2, 18]))
    record = json.loads(ws.subset_info_path("mine").read_text())
    assert record["inputs"][0]["outside_pool"] == 1


def test_datacomp_metadata_folder(tmp_path):
    meta = tmp_path / "metadata"
    meta.mkdir()
    pd.DataFrame({"uid": [uid(i) for i in range(6)], "url": ["u"] * 6, "text": CAPTIONS + CAPTIONS[:2],
                  "original_width": [300, 300, 300, 300, 100, 300], "original_height": [300] * 6,
                  "clip_b32_similarity_score": [0.3] * 6, "clip_l14_similarity_score": [0.3] * 6}
                 ).to_parquet(meta / "0000.parquet")
    ws = Workspace.create(tmp_path / "ws")
    make(ws, {"basic": "basic"}, tables=str(meta))
    assert np.array_equal(read_subset(ws.subset_path("basic")), pairs_of([0, 2]))


def test_cli_inline_forms_and_errors(ws, capsys):
    assert main(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "c1 = clip_score(threshold=0.15)",
                 "--spec", "{c2: {clip_score: {column: clip_l14_similarity_score, threshold: 0.4}}}"]) == 0
    assert np.array_equal(read_subset(ws.subset_path("c1")), pairs_of(range(15, 19)))
    assert np.array_equal(read_subset(ws.subset_path("c2")), pairs_of([4, 9, 14]))
    out = capsys.readouterr().out
    assert "c1" in out and "c2" in out and "made" in out
    assert main(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "c1 & ~c2", "--name", "d"]) == 0
    assert np.array_equal(read_subset(ws.subset_path("d")), pairs_of([15, 16, 17, 18]))
    assert main(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "c1 & nosuch"]) == 2
    err = capsys.readouterr().err
    assert "'nosuch' is neither a filter nor a subset" in err
    assert main(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "clip_score(column=nope, threshold=1)",
                 "--name", "x"]) == 2
    err = capsys.readouterr().err  # the calls that read the columns the table has, ready to paste
    assert "00000.parquet: clip_score reads column nope (the one asked for), which this score table lacks; use " \
           "clip_score(model=b32, threshold=1) or clip_score(model=l14, threshold=1)" in err


def test_cli_spec_file_and_config(ws, tmp_path, capsys):
    spec = tmp_path / "subsets.yaml"
    spec.write_text("hi: clip_score(threshold=0.17)\nlo: {not: hi}\n")
    assert main(["filter", "-w", str(ws.root), "--executor", "local", "--spec", str(spec)]) == 0
    assert len(read_subset(ws.subset_path("lo"))) == 17
    config = tmp_path / "config.yaml"
    config.write_text(f"workspace: {ws.root}\nexecutor: local\nfilter:\n  subsets:\n    en: basic\n")
    assert main(["filter", "--config", str(config)]) == 0
    assert ws.subset_path("en").exists()
    assert main(["filter", "-w", str(ws.root), "--list-filters"]) == 0
    assert "clip_score" in capsys.readouterr().out


def test_parse_cli_spec_forms():
    def is_filter(n):
        return n in {"basic", "clip_score"}

    assert parse_cli_spec("a = basic & b", None, is_filter) == {"a": "basic & b"}
    assert parse_cli_spec("{clip_score: {fraction: 0.3}}", "c", is_filter) == {"c": {"clip_score": {"fraction": 0.3}}}
    assert parse_cli_spec("{a: basic, b: {not: a}}", None, is_filter) == {"a": "basic", "b": {"not": "a"}}
    assert parse_cli_spec("basic & ~clip30", None, is_filter) == {"basic_and_not_clip30": "basic & ~clip30"}
    with pytest.raises(ConfigError, match="--name"):
        parse_cli_spec("{clip_score: {fraction: 0.3}}", None, is_filter)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_cli_spec("nope.yaml", None, is_filter)


def test_ray_stage(ws, ray_runtime):
    out = run_filter(ws, FilterConfig(subsets={"top": "clip_score(fraction=0.5) & basic"}), ray_runtime)
    assert out["top"]["count"] == 5
    assert np.array_equal(read_subset(ws.subset_path("top")), pairs_of([10, 12, 14, 16, 18]))


def test_files_get_the_umask_mode(ws):
    import os
    import stat

    old = os.umask(0o022)
    try:
        make(ws, {"top": "clip_score(fraction=0.5)"})
    finally:
        os.umask(old)
    for path in (ws.subset_path("top"), ws.subset_info_path("top")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
