"""poolsieve.api: a workspace read from Python gives what the commands give (subsets, tables, filters,
embeddings), writes nothing, and treats the workspace's files as hostile."""

from __future__ import annotations

import html
import io
import os
import re
import zipfile

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import scored_workspace as sw

import poolsieve.api as ps
from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import read_score_table, read_subset
from poolsieve.core.uids import UidSet
from poolsieve.filters.registry import ScoredPool
from poolsieve.pipeline import cli


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return sw.shared(tmp_path_factory)


@pytest.fixture(scope="module")
def api(ws):
    return ps.open(ws.root)


def folder_state(folder) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def pool_frame(ws) -> pd.DataFrame:
    """Every score-table row, read with the project's own reader, table after table."""
    return pd.concat([read_score_table(t) for t in ws.score_tables()], ignore_index=True)


# ------------------------------------------------------------------------------ subsets and filters
def test_every_subset_equals_the_file_poolsieve_filter_wrote(ws, api):
    assert api.subsets() == sorted(sw.SPECS)
    for name in sw.SPECS:
        assert api.subset(name) == UidSet.from_pairs(read_subset(ws.subset_path(name))), name
    assert 0 < len(api.subset("clip30")) < len(api.subset("basic")) < len(api.subset("no_filter"))


def test_a_filter_in_memory_equals_poolsieve_filters_npy_byte_for_byte(ws, tmp_path):
    work = sw.copy(ws, tmp_path / "ws")
    api = ps.open(work.root)
    specs = {**sw.SPECS, "both": "basic & clip30", "rest": f"~basic | clip_score(column={sw.COLUMN}, threshold=0.05)"}
    before = folder_state(work.root)
    in_memory = {name: api.filter(f"{name} = {spec}") for name, spec in specs.items()}
    assert folder_state(work.root) == before  # the API wrote nothing
    made = {"both": specs["both"], "rest": specs["rest"]}
    assert cli.main(sw.filter_argv(work.root, made)) == 0
    for name, uids in in_memory.items():
        buffer = io.BytesIO()
        np.save(buffer, uids.to_pairs())
        assert buffer.getvalue() == work.subset_path(name).read_bytes(), name


def test_a_filter_spec_mapping_and_its_refusals(api):
    made = api.filter({"en": "basic", "top": f"en & clip_score(column={sw.COLUMN}, fraction=0.5)"}, name="top")
    assert made == api.filter(f"basic & clip_score(column={sw.COLUMN}, fraction=0.5)")
    with pytest.raises(ConfigError, match="pass name="):
        api.filter({"a": "basic", "b": "no_filter"})
    with pytest.raises(ConfigError, match="neither a filter nor a subset"):
        api.filter("nonesuch & basic")


def test_uid_sets_combine_convert_and_give_a_membership_column(api):
    basic, clip, pool = api.subset("basic"), api.subset("clip30"), api.subset("no_filter")
    both = basic & clip
    assert set(both.to_hex()) == set(basic.to_hex()) & set(clip.to_hex())
    assert set((basic | clip).to_hex()) == set(basic.to_hex()) | set(clip.to_hex())
    assert set((pool - basic).to_hex()) == set(pool.to_hex()) - set(basic.to_hex())
    assert UidSet.from_hex(both.to_hex()) == both and both.to_hex()[0] in both
    frame = api.to_pandas(["uid"], membership=["basic", both])
    assert list(frame.columns) == ["uid", "in_basic", "in_subset_1"]
    assert frame["in_basic"].tolist() == [u in set(basic.to_hex()) for u in frame["uid"]]
    assert frame["in_subset_1"].sum() == len(both)


# ---------------------------------------------------------------------------------------- tables
def test_a_table_read_has_the_score_tables_rows_and_values(ws, api):
    expected = pool_frame(ws)
    got = api.to_pandas()
    pd.testing.assert_frame_equal(got, expected, check_dtype=True)
    assert isinstance(api.dataset(), pads.Dataset) and api.dataset().count_rows() == len(expected)


def test_columns_rows_and_a_subset_are_read_as_asked(ws, api):
    clip = set(api.subset("clip30").to_hex())
    columns = ["uid", "text", sw.COLUMN]
    got = api.to_pandas(columns, filter=pads.field("status") == "success", subset="clip30", membership="basic")
    full = pool_frame(ws)
    expected = full[(full["status"] == "success") & full["uid"].isin(clip)][columns].reset_index(drop=True)
    expected["in_basic"] = expected["uid"].isin(set(api.subset("basic").to_hex()))
    pd.testing.assert_frame_equal(got, expected)
    assert len(got) == len(clip)


def test_polars_gets_the_same_table(api):
    pl = pytest.importorskip("polars")
    frame = api.to_polars(["uid", sw.COLUMN], subset="basic")
    assert isinstance(frame, pl.DataFrame)
    pd.testing.assert_frame_equal(frame.to_pandas(), api.to_pandas(["uid", sw.COLUMN], subset="basic"))


# ------------------------------------------------------------------------------------ embeddings
def test_a_subsets_embeddings_are_its_rows_of_the_npz(ws, api):
    clip = api.subset("clip30")
    pool = ScoredPool(ws.score_tables())
    every = pool.load_embeddings([f"{sw.KEY}_img"])[f"{sw.KEY}_img"]  # the filters' reader: all members
    keys = pool.uid_keys()
    loaded = api.embeddings(f"{sw.KEY}_img", "clip30").load()
    assert len(loaded) == len(clip) and UidSet(loaded.keys) == clip
    assert np.array_equal(loaded.vectors, every[clip.isin(keys)]) and loaded.vectors.dtype == np.float16
    streamed = list(api.embeddings(f"{sw.KEY}_img", clip).batches(rows=5))
    assert max(len(b) for b in streamed) == 5
    assert np.array_equal(np.concatenate([b.vectors for b in streamed]), loaded.vectors)
    assert sum((b.uids for b in streamed), []) == loaded.uids
    everyone = api.embeddings(f"{sw.KEY}_txt").load()
    assert len(everyone) == len(api.subset("no_filter"))  # every member; the undecoded row is none


def test_compressed_npz_is_read_too_and_a_lying_header_is_refused(ws, tmp_path):
    work = sw.copy(ws, tmp_path / "ws")
    api = ps.open(work.root)
    expected = api.embeddings(f"{sw.KEY}_img", "basic").load().vectors
    npz = work.embeddings_path("00001")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(npz, **arrays)
    assert np.array_equal(api.embeddings(f"{sw.KEY}_img", "basic").load().vectors, expected)

    np.savez(npz, **{**arrays, f"{sw.KEY}_img": arrays[f"{sw.KEY}_img"][:-1]})  # one row short
    with pytest.raises(InputError, match="misaligned"):
        api.embeddings(f"{sw.KEY}_img", "basic").load()
    with zipfile.ZipFile(npz, "w") as z:  # a header that claims more rows than the bytes hold
        bad = io.BytesIO()
        np.save(bad, arrays[f"{sw.KEY}_img"])
        data = bad.getvalue().replace(b"(40, ", b"(90, ", 1)
        z.writestr(f"{sw.KEY}_img.npy", data)
    with pytest.raises(InputError, match="another size"):
        api.embeddings(f"{sw.KEY}_img", "basic").load()
    np.savez(npz, **{f"{sw.KEY}_img": np.array([{"a": 1}] * 40, dtype=object).reshape(40, 1)})
    with pytest.raises(InputError, match=r"00001\.npz"):
        api.embeddings(f"{sw.KEY}_img", "basic").load()  # never unpickled


def test_a_fifo_in_place_of_a_table_is_refused_without_blocking(ws, tmp_path):
    work = sw.copy(ws, tmp_path / "ws")
    npz = work.embeddings_path("00002")
    npz.unlink()
    os.mkfifo(npz)
    with pytest.raises(InputError, match="FIFO"):
        ps.open(work.root).embeddings(f"{sw.KEY}_img", "basic").load()
    table = work.score_table_path("00002")
    table.unlink()
    os.mkfifo(table)
    with pytest.raises(InputError, match=r"00002\.parquet.*FIFO"):
        ps.open(work.root).dataset()


def test_unknown_subset_and_bad_names_are_one_line(api, ws):
    with pytest.raises(InputError, match="does not exist"):
        api.subset("nonesuch")
    with pytest.raises(ConfigError, match="not allowed"):
        api.subset("../etc/passwd")
    with pytest.raises(InputError, match="workspace does not exist"):
        ps.open(ws.root / "nope")


# ------------------------------------------------------------------------------------------ grid
def test_the_grid_shows_thumbnails_captions_and_scores_escaped(api):
    frame = api.to_pandas(["uid", "text", sw.COLUMN], subset="no_filter").sort_values(sw.COLUMN)
    grid = api.grid(frame, limit=8, title='lowest <b>"scores"</b>')
    page = grid.html()
    assert grid._repr_html_() == page and len(grid) == 8
    assert page.count("data:image/jpeg;base64,") == 8
    captions = [html.escape(t if len(t) <= 90 else t[:89] + "…") for t in frame["text"].head(8)]
    assert re.findall(r'<div class="caption" title="[^"]*">(.*?)</div>', page) == captions  # the frame's order
    assert "<b>" not in page and "&lt;b&gt;&quot;scores&quot;&lt;/b&gt;" in page
    assert f"{sw.KEY} score" in page

    hostile = api.grid([u for u, t in zip(frame["uid"], frame["text"], strict=True) if "<script>" in t])
    assert len(hostile) == 1 and "<script>" not in hostile.html() and "&lt;script&gt;" in hostile.html()
    sample = api.grid("clip30", limit=5, scores=[sw.COLUMN])
    assert len(sample) == 5 and sample.html() == api.grid("clip30", limit=5, scores=[sw.COLUMN]).html()


def test_tables_with_different_columns_read_as_one_and_a_type_clash_is_refused(tmp_path):
    scores = tmp_path / "ws" / "scores"
    scores.mkdir(parents=True)
    pd.DataFrame({"uid": ["0" * 32, "1" * 32], "status": ["success", "decode_error"],
                  "clip_b32_similarity_score": [0.1, 0.2]}).to_parquet(scores / "00000.parquet")
    pd.DataFrame({"uid": ["2" * 32], "status": ["success"], "clip_b32_similarity_score": [0.3],
                  "clip_l14_similarity_score": [0.5]}).to_parquet(scores / "00001.parquet")
    api = ps.open(tmp_path / "ws")
    frame = api.to_pandas(["uid", "clip_l14_similarity_score"])
    assert frame["uid"].tolist() == ["0" * 32, "1" * 32, "2" * 32]
    assert frame["clip_l14_similarity_score"].isna().tolist() == [True, True, False]
    assert api.to_pandas(["uid"], filter=pads.field("clip_l14_similarity_score") > 0.1)["uid"].tolist() == ["2" * 32]
    pd.DataFrame({"uid": ["3" * 32], "clip_b32_similarity_score": ["high"]}).to_parquet(scores / "00002.parquet")
    with pytest.raises(InputError, match=r"00002\.parquet: its columns do not match"):
        api.dataset()
    pd.DataFrame({"uid": [3], "clip_b32_similarity_score": [0.4]}).to_parquet(scores / "00002.parquet")
    with pytest.raises(InputError, match=r"00002\.parquet: column uid has type int64"):
        api.dataset()
