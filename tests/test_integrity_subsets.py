"""Issue 13, findings 7 and 10 (subset files): a subset's ``.npy`` and ``.json`` change together or not at all,
and a malformed subset or spec ends in one line, never a traceback and never unpickling.

A run killed between the two writes is reproduced by leaving exactly what such a kill leaves: the new file of
one kind beside the old file of the other (both orders). Filter then remakes the pair; reshard, submit and
inspect refuse it in one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.formats import file_sha256, read_subset, write_subset
from poolsieve.core.subsets import SHA256_KEY
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import cli

N = 40


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """40 downloaded samples in 2 shards, with score tables: sample i scores i/40."""
    w = Workspace.create(tmp_path / "ws")
    samples = make_samples(N, seed=11)
    write_img2dataset_shards(w.shards_dir, samples, per_shard=20)
    w.scores_dir.mkdir()
    for shard in range(2):
        rows = range(20 * shard, 20 * shard + 20)
        pd.DataFrame({"uid": [samples[i].uid for i in rows], "text": [samples[i].caption for i in rows],
                      "clip_b32_similarity_score": [i / N for i in rows], "status": ["success"] * 20},
                     ).to_parquet(w.score_table_path(f"{shard:05d}"))
    return w


def run(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def filter_cli(ws: Workspace, spec: str, capsys, *extra: str) -> tuple[int, str, list[str]]:
    return run(["filter", "-w", str(ws.root), "--executor", "local", "--spec", spec, *extra], capsys)


def test_record_names_the_npy_it_describes(ws, capsys):
    assert filter_cli(ws, "half = clip_score(fraction=0.5)", capsys)[0] == 0
    record = json.loads(ws.subset_info_path("half").read_text())
    assert record[SHA256_KEY] == file_sha256(ws.subset_path("half"))
    assert record["count"] == len(read_subset(ws.subset_path("half"))) > 0


@pytest.mark.parametrize("left_behind", ["new_npy_old_json", "new_json_old_npy"])
def test_interrupted_overwrite_is_remade_and_refused_downstream(ws, capsys, left_behind):
    assert filter_cli(ws, "x = clip_score(fraction=0.25)", capsys)[0] == 0
    assert filter_cli(ws, "wide = clip_score(fraction=0.75)", capsys)[0] == 0
    clean_npy = ws.subset_path("x").read_bytes()
    # `filter --overwrite --spec "x = clip_score(fraction=0.75)"` killed between its two renames:
    if left_behind == "new_npy_old_json":
        ws.subset_path("x").write_bytes(ws.subset_path("wide").read_bytes())
    else:
        ws.subset_info_path("x").write_text(ws.subset_info_path("wide").read_text())

    for argv in (["submit", "--subset", "x", "--executor", "local"], ["reshard", "--subset", "x", "--executor", "local"],
                 ["inspect"]):
        code, _, err = run([argv[0], "-w", str(ws.root), *argv[1:]], capsys)
        assert code == 2 and len(err) == 1, (argv, err)
        assert str(ws.subset_path("x")) in err[0] and "does not match its record" in err[0], err
    assert not (ws.root / "submissions" / "x").exists() and not ws.filtered_dir("x").exists()

    # The rerun without --overwrite does not call the broken pair up to date: it remakes it.
    code, out, _ = filter_cli(ws, "x = clip_score(fraction=0.25)", capsys)
    assert code == 0 and "remade (was incomplete)" in out
    assert ws.subset_path("x").read_bytes() == clean_npy
    assert json.loads(ws.subset_info_path("x").read_text())[SHA256_KEY] == file_sha256(ws.subset_path("x"))
    assert run(["submit", "-w", str(ws.root), "--subset", "x", "--executor", "local"], capsys)[0] == 0
    shipped = ws.root / "submissions" / "x" / "x.npy"
    assert shipped.read_bytes() == clean_npy


def test_record_without_sha256_is_refused_and_remade(ws, capsys):
    """Every record poolsieve writes names its .npy's sha256: one without it describes no file for sure."""
    assert filter_cli(ws, "x = clip_score(fraction=0.25)", capsys)[0] == 0
    record = json.loads(ws.subset_info_path("x").read_text())
    count = record["count"]
    del record[SHA256_KEY]
    ws.subset_info_path("x").write_text(json.dumps(record))
    code, _, err = run(["submit", "-w", str(ws.root), "--subset", "x", "--executor", "local"], capsys)
    assert code == 2 and len(err) == 1 and f"record names no {SHA256_KEY}" in err[0] and "x.npy" in err[0], err
    code, out, _ = filter_cli(ws, "x = clip_score(fraction=0.25)", capsys)
    assert code == 0 and "remade (was incomplete)" in out and len(read_subset(ws.subset_path("x"))) == count
    assert run(["submit", "-w", str(ws.root), "--subset", "x", "--executor", "local"], capsys)[0] == 0


def test_a_broken_pair_used_as_an_input_is_refused(ws, capsys):
    assert filter_cli(ws, "x = clip_score(fraction=0.25)", capsys)[0] == 0
    write_subset(ws.subset_path("x"), read_subset(ws.subset_path("x"))[:2])
    code, _, err = filter_cli(ws, "y = x & clip_score(fraction=0.5)", capsys)
    assert code == 2 and len(err) == 1 and "x.npy" in err[0] and "does not match its record" in err[0], err
    assert not ws.subset_path("y").exists()


class Payload:
    """Unpickling this object creates the marker file (``np.load(..., allow_pickle=True)`` would run it)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_object_npy_is_one_line_and_never_unpickled(ws, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    ws.subsets_dir.mkdir(exist_ok=True)
    np.save(ws.subsets_dir / "obj.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    for argv in (["inspect"], ["submit", "--subset", "obj"], ["reshard", "--subset", "obj", "--executor", "local"]):
        code, _, err = run([argv[0], "-w", str(ws.root), *argv[1:]], capsys)
        assert code == 2 and len(err) == 1 and "obj.npy" in err[0] and "dtype is object" in err[0], (argv, err)
    assert not marker.exists()


def test_inspect_lists_good_subsets_and_names_the_bad_one(ws, capsys):
    assert filter_cli(ws, "x = clip_score(fraction=0.25)", capsys)[0] == 0
    (ws.subsets_dir / "cut.npy").write_bytes(ws.subset_path("x").read_bytes()[:-5])
    code, out, err = run(["inspect", "-w", str(ws.root)], capsys)
    assert code == 2 and len(err) == 1 and "cut.npy" in err[0] and "truncated" in err[0], err
    assert f"subset     x: {len(read_subset(ws.subset_path('x')))} uids" in out


@pytest.mark.parametrize("spec", ["{a: [}", "a: b: c", "a: basic\n  b: [", "{a: !!python/object/apply:os.system [x]}"])
def test_yaml_error_in_spec_is_one_line(ws, capsys, spec):
    code, _, err = filter_cli(ws, spec, capsys)
    assert code == 2 and len(err) == 1 and "malformed YAML at line" in err[0], err


def test_yaml_error_in_spec_file_is_one_line(ws, tmp_path, capsys):
    bad = tmp_path / "subsets.yaml"
    bad.write_text("top:\n  clip_score: {fraction: [0.3\n")
    code, _, err = filter_cli(ws, str(bad), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"poolsieve filter: error: {bad}: malformed YAML"), err
