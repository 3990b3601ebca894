"""Table-only filters on a hand-made pool: exact uid sets, ties at the fraction cut, set algebra."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.uids import SUBSET_DTYPE, UidSet, hex_to_keys, keys_to_pairs, uids_to_pairs
from poolsieve.filters import clip_score as clip_score_module
from poolsieve.filters.algebra import Evaluator
from poolsieve.filters.algebra import evaluate_spec as evaluate_uids
from poolsieve.filters.registry import ScoredPool, get_filter
from poolsieve.filters.spec import parse_expression, parse_spec, render


def uid(i: int) -> str:
    """Distinct uids whose high halves are out of order with ``i`` (so sorting is exercised)."""
    i = int(i)
    return f"{(0x9E3779B97F4A7C15 * (i + 1)) % 2**64:016x}{i:016x}"


def pairs_of(indices) -> np.ndarray:
    return np.sort(uids_to_pairs([uid(i) for i in indices]), order=["f0", "f1"])


# index -> (text, width, height, b32, l14, status, language column value or None)
SCORE_ROWS = {
    0: ("a photo of a goldfish in a bowl", 256, 256, 0.31, 0.40, "success", "en"),
    1: ("a photo of a goldfish in a bowl", 256, 256, 0.35, 0.45, "failed_to_decode", None),
    2: ("the dog runs across a sunny field", 256, 256, 0.29, 0.20, "success", "de"),   # column says German
    3: ("une belle photo de la tour eiffel", 256, 256, 0.30, 0.30, "success", "en"),   # column says English
    4: ("wearing a blue T-shirt today", 640, 480, 0.20, 0.30, "success", "en"),
}
# DataComp metadata layout: no status, no language column (language is computed)
META_ROWS = {
    10: ("three tiger sharks swimming near the reef", 300, 300, 0.28, 0.50),
    11: ("two words", 300, 300, 0.40, 0.10),                        # 2 words
    12: ("the dog runs", 300, 300, 0.27, 0.30),                      # 3 words, 12 chars
    13: ("tiny", 300, 300, 0.10, 0.30),                              # 1 word
    14: ("a cat sitting on the red sofa", 199, 400, 0.30, 0.30),     # short side 199
    15: ("a cat sitting on the red sofa", 200, 600, 0.30, 0.30),     # aspect exactly 3
    16: ("a cat sitting on the red sofa", 200, 601, 0.30, 0.30),     # aspect 3.005
    17: ("une belle photo de la tour eiffel à paris", 400, 400, 0.50, 0.30),  # French
    18: ("a cat sitting\non the red sofa", 400, 300, 0.28, 0.30),    # newline in caption
    19: ("a cat sitting on the red sofa", 0, 0, 0.30, 0.30),         # no size
    20: ("a b c", 300, 300, 0.30, 0.30),                             # 3 words, 5 chars
    21: ("a b c d", 300, 300, 0.30, 0.30),                           # 4 words, 7 chars
}


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    rows = [dict(uid=uid(i), key=f"{i:09d}", text=t, original_width=w, original_height=h,
                 clip_b32_similarity_score=b, clip_l14_similarity_score=l14, status=s,
                 error=None if s == "success" else "bad jpeg", language=lang)
            for i, (t, w, h, b, l14, s, lang) in SCORE_ROWS.items()]
    pd.DataFrame(rows).to_parquet(root / "00000.parquet")
    meta = [dict(uid=uid(i), url=f"http://127.0.0.1/{i}.jpg", text=t, original_width=w, original_height=h,
                 clip_b32_similarity_score=b, clip_l14_similarity_score=l14)
            for i, (t, w, h, b, l14) in META_ROWS.items()]
    pd.DataFrame(meta).to_parquet(root / "00001.parquet")
    return root


@pytest.fixture(scope="module")
def pool(pool_dir):
    return ScoredPool(sorted(pool_dir.glob("*.parquet")))


def run(pool, name, **params):
    """A filter's uid set as DataComp's subset array."""
    out = get_filter(name)(pool, **params)
    assert isinstance(out, UidSet)
    pairs = out.to_pairs()
    assert pairs.dtype == SUBSET_DTYPE
    return pairs


def evaluate_spec(pool, spec):
    return evaluate_uids(pool, spec).to_pairs()


def test_no_filter_is_every_member(pool):
    assert np.array_equal(run(pool, "no_filter"), pairs_of([0, 2, 3, 4, *META_ROWS]))


def test_basic_matches_datacomp_rules(pool):
    # 0 en; 2 dropped (language column says de); 3 kept (column says en); 4 en
    # 10 en; 12 three words; 15 aspect exactly 3; 18 newline; 21 four words of 7 chars
    assert np.array_equal(run(pool, "basic"), pairs_of([0, 3, 4, 10, 12, 15, 18, 21]))


def test_basic_recomputes_language_when_asked(pool):
    assert np.array_equal(run(pool, "basic", recompute_language=True), pairs_of([0, 2, 4, 10, 12, 15, 18, 21]))


def test_basic_parameters(pool):
    assert np.array_equal(run(pool, "basic", min_words=5, min_side=250), pairs_of([0, 3, 4, 10, 18]))
    assert np.array_equal(run(pool, "basic", language="fr", max_aspect=10), pairs_of([17]))
    assert np.array_equal(run(pool, "basic_filter"), run(pool, "basic"))


def test_clip_score_threshold_any_column(pool):
    assert np.array_equal(run(pool, "clip_score", threshold=0.30), pairs_of([0, 3, 11, 14, 15, 16, 17, 19, 20, 21]))
    assert np.array_equal(run(pool, "clip_score", column="clip_l14_similarity_score", threshold=0.45),
                          pairs_of([10]))
    assert np.array_equal(run(pool, "clip_score", model="l14", threshold=0.45), pairs_of([10]))
    with pytest.raises(ConfigError, match="not both"):
        run(pool, "clip_score", model="l14", column="clip_l14_similarity_score", threshold=0.45)


def test_clip_score_fraction_keeps_ties(pool):
    # 16 members; l14 scores sorted: .50 .40 .30 x12 .20 .10 ; int(16 * .2) = 3 -> threshold .30 (ties kept)
    got = run(pool, "clip_score", column="clip_l14_similarity_score", fraction=0.2)
    assert np.array_equal(got, pairs_of([0, 3, 4, 10, *range(12, 22)]))
    # int(16 * .1) = 1 -> threshold .40: the failed row 1 (.45) is not a member
    assert np.array_equal(run(pool, "clip_score", column="clip_l14_similarity_score", fraction=0.1), pairs_of([0, 10]))
    assert len(run(pool, "clip_score", column="clip_l14_similarity_score", fraction=1.0)) == 16


def test_clip_score_needs_one_mode(pool):
    with pytest.raises(ConfigError, match="exactly one"):
        run(pool, "clip_score", fraction=0.3, threshold=0.2)
    with pytest.raises(ConfigError, match="fraction"):
        run(pool, "clip_score", fraction=1.5)


def test_missing_column_names_file(pool, pool_dir):
    with pytest.raises(InputError, match=r"00000.parquet.*clip_h14_similarity_score"):
        run(pool, "clip_score", column="clip_h14_similarity_score", threshold=0.3)


def test_laion2b_fasttext(pool):
    # English (column first, else computed) and b32 >= 0.28; no caption-length or size rules.
    # Out: 2 (column de), 4 (.20), 12 (.27), 13 (.10), 17 (French)
    # (laion2b itself, with DataComp's gcld3: tests/test_laion2b_datacomp.py)
    assert np.array_equal(run(pool, "laion2b_fasttext"), pairs_of([0, 3, 10, 11, 14, 15, 16, 18, 19, 20, 21]))


def test_text_based_in1k(pool):
    # goldfish (0; 1 not a member), T-shirt -> "t shirt" (4), tiger sharks -> plural of "tiger shark" (10)
    # (text_based itself, DataComp's WordNet/ImageNet-21k rule: tests/test_text_based_datacomp.py)
    assert np.array_equal(run(pool, "text_based_in1k"), pairs_of([0, 4, 10]))
    assert np.array_equal(run(pool, "text_based_in1k", classes=["sofa", "Eiffel Tower"]),
                          pairs_of([14, 15, 16, 18, 19]))
    assert np.array_equal(run(pool, "text_based_in1k", classes=["tour eiffel"], language=None), pairs_of([3, 17]))


def reference_fraction_cut(values: np.ndarray, fraction: float) -> np.ndarray:
    """DataComp's get_threshold + ``>=``: indices of kept rows."""
    threshold = -np.sort(-values)[int(len(values) * fraction)]
    return np.flatnonzero(values >= threshold)


@pytest.mark.parametrize("fine", [False, True])
def test_fraction_cut_equals_datacomp_on_many_shards(tmp_path, monkeypatch, fine):
    if fine:  # force the second, finer histogram pass
        monkeypatch.setattr(clip_score_module, "MAX_GATHERED", 0)
    rng = np.random.default_rng(7)
    n = 3000
    values = np.round(rng.normal(0.25, 0.08, n), 2)  # heavy ties
    values[:40] = -0.0
    values[40:80] = 0.0
    values[80:90] = -0.31
    values = values.astype(np.float64)
    uids = [uid(i) for i in range(n)]
    for s, chunk in enumerate(np.array_split(np.arange(n), 7)):
        pd.DataFrame({"uid": [uids[i] for i in chunk], "score": values[chunk]}).to_parquet(tmp_path / f"{s:05d}.parquet")
    pool = ScoredPool(sorted(tmp_path.glob("*.parquet")))
    for fraction in (0.001, 0.1, 0.3, 0.5, 0.97, 0.99):
        expected = pairs_of(reference_fraction_cut(values, fraction))
        report: dict = {}
        got = clip_score_module.clip_score(pool, column="score", fraction=fraction, report=report).to_pairs()
        assert np.array_equal(got, expected), fraction
        assert report["threshold"] == -np.sort(-values)[int(n * fraction)]


def test_fraction_cut_float32_column_with_nan(tmp_path):
    values = np.array([0.3, 0.2, np.nan, 0.2, 0.1, 0.25, 0.2, 0.05], dtype=np.float32)
    pd.DataFrame({"uid": [uid(i) for i in range(8)], "s": values}).to_parquet(tmp_path / "a.parquet")
    pool = ScoredPool([tmp_path / "a.parquet"])
    # int(8 * .25) = 2 -> desc [.3 .25 .2 .2 .2 ...] -> threshold .2, NaN never kept
    assert np.array_equal(clip_score_module.clip_score(pool, column="s", fraction=0.25).to_pairs(), pairs_of([0, 1, 3, 5, 6]))


def test_uid_keys_roundtrip_and_errors():
    uids = [uid(i) for i in range(50)] + ["0" * 32, "f" * 32]
    pairs = uids_to_pairs(uids)
    keys = hex_to_keys(uids)
    assert np.array_equal(keys_to_pairs(keys), pairs)
    assert np.array_equal(UidSet(keys).to_pairs(), np.unique(np.sort(pairs, order=["f0", "f1"])))
    assert UidSet.from_pairs(pairs[::-1]) == UidSet(keys)
    with pytest.raises(InputError, match="bad uid 'XYZ' at row 1"):
        hex_to_keys([uid(0), "XYZ"])
    with pytest.raises(InputError, match="row 0"):
        hex_to_keys(["0" * 31 + "G"])


# ------------------------------------------------------------------------------------ set algebra
def test_expression_parsing_roundtrip():
    for text in ["basic", "basic & clip_score(fraction=0.3)", "(a | b) & ~c", "not (a and b) or c",
                 "clip_score(column=clip_l14_similarity_score, threshold=0.25) & ~laion2b",
                 "text_based(classes=[sofa, 'Eiffel Tower'])"]:
        node = parse_expression(text)
        assert parse_expression(render(node)) == node
    assert parse_expression("a & b | c") == {"or": [{"and": [{"ref": "a"}, {"ref": "b"}]}, {"ref": "c"}]}
    assert parse_spec({"and": ["basic", {"clip_score": {"fraction": 0.3}}]}) == parse_expression(
        "basic & clip_score(fraction=0.3)")
    for bad in ["a &", "f(x)", "(a", "a b", "a $ b", ""]:
        with pytest.raises(ConfigError):
            parse_expression(bad)
    with pytest.raises(ConfigError, match="one key"):
        parse_spec({"basic": None, "laion2b": None})


def test_set_algebra_exact(pool):
    basic = set(map(tuple, run(pool, "basic").tolist()))
    laion = set(map(tuple, run(pool, "laion2b").tolist()))
    everyone = set(map(tuple, run(pool, "no_filter").tolist()))
    as_set = lambda a: set(map(tuple, a.tolist()))  # noqa: E731
    assert as_set(evaluate_spec(pool, "basic & laion2b")) == basic & laion
    assert as_set(evaluate_spec(pool, "basic | laion2b")) == basic | laion
    assert as_set(evaluate_spec(pool, "~basic")) == everyone - basic
    assert as_set(evaluate_spec(pool, "basic and not laion2b")) == basic - laion
    assert as_set(evaluate_spec(pool, {"or": [{"not": "basic"}, "laion2b"]})) == (everyone - basic) | laion
    got = evaluate_spec(pool, "basic & clip_score(column=clip_l14_similarity_score, fraction=0.2)")
    assert np.array_equal(got, pairs_of([0, 3, 4, 10, 12, 15, 18, 21]))


def test_named_definitions_steps_and_reuse(pool):
    ev = Evaluator(pool, {"clip": "clip_score(column=clip_l14_similarity_score, fraction=0.2)",
                          "both": "basic & clip", "neither": "~(basic | clip)"})
    both = ev.evaluate_defined("both")
    assert np.array_equal(both.to_pairs(), pairs_of([0, 3, 4, 10, 12, 15, 18, 21]))
    steps = {s["step"]: s for s in ev.steps}
    assert steps["basic"]["count"] == 8
    assert steps["clip_score(column=clip_l14_similarity_score, fraction=0.2)"]["details"]["threshold"] == 0.3
    assert steps["basic & clip"]["counts"] == [8, 8]
    first = len(ev.steps)
    neither = ev.evaluate_defined("neither")
    assert np.array_equal(neither.to_pairs(), pairs_of([2, 11]))  # 11: two words, l14 .10
    reused = [s for s in ev.steps[first:] if s.get("reused")]
    assert {s["step"] for s in reused} == {"basic", "clip"}


def test_cycles_and_unknown_names(pool):
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        Evaluator(pool, {"a": "b & basic", "b": "a"}).evaluate_defined("a")
    with pytest.raises(ConfigError, match="'nosuch' is neither a filter nor a subset"):
        evaluate_spec(pool, "basic & nosuch")
    with pytest.raises(ConfigError, match="no parameter fraction"):
        evaluate_spec(pool, "basic(fraction=0.3)")


def test_ray_matches_local(pool_dir, ray_runtime):
    ray_pool = ScoredPool(sorted(pool_dir.glob("*.parquet")), ray_runtime)
    local_pool = ScoredPool(sorted(pool_dir.glob("*.parquet")))
    for spec in ["basic", "text_based | laion2b", "clip_score(column=clip_l14_similarity_score, fraction=0.2)"]:
        assert np.array_equal(evaluate_spec(ray_pool, spec), evaluate_spec(local_pool, spec)), spec


def test_empty_and_dictionary_encoded_tables(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pd.DataFrame({"uid": pd.Series([], dtype=str), "text": pd.Series([], dtype=str),
                  "original_width": pd.Series([], dtype="int64"), "original_height": pd.Series([], dtype="int64"),
                  "clip_b32_similarity_score": pd.Series([], dtype="float64")}).to_parquet(tmp_path / "0.parquet")
    empty = ScoredPool([tmp_path / "0.parquet"])
    for spec in ["no_filter", "basic", "laion2b", "text_based", "clip_score(fraction=0.3)", "~basic"]:
        assert len(evaluate_spec(empty, spec)) == 0, spec
    pq.write_table(pa.table({
        "uid": pa.array([uid(i) for i in range(4)]).dictionary_encode(),
        "text": pa.array(["a photo of a goldfish in a bowl", None, "a photo of a goldfish in a bowl", "x"]
                         ).dictionary_encode(),
        "original_width": [300] * 4, "original_height": [300] * 4,
        "clip_b32_similarity_score": [0.1, 0.2, 0.3, 0.4]}), tmp_path / "1.parquet")
    encoded = ScoredPool([tmp_path / "1.parquet"])
    assert np.array_equal(evaluate_spec(encoded, "basic"), pairs_of([0, 2]))
    assert np.array_equal(evaluate_spec(encoded, "text_based"), pairs_of([0, 2]))
    assert np.array_equal(evaluate_spec(encoded, "clip_score(fraction=0.5)"), pairs_of([1, 2, 3]))


def test_language_column_without_values_is_computed(tmp_path):
    """A table scored with ``--no-language`` has the column but no values: compute them."""
    texts = ["a photo of a goldfish in a bowl", "une belle photo de la tour eiffel", "a red car parked outside"]
    pd.DataFrame({"uid": [uid(i) for i in range(3)], "text": texts, "original_width": [300] * 3,
                  "original_height": [300] * 3, "language": [None, None, "fr"], "status": ["success"] * 3,
                  }).to_parquet(tmp_path / "0.parquet")
    pool = ScoredPool([tmp_path / "0.parquet"])
    assert np.array_equal(run(pool, "basic"), pairs_of([0]))  # 2 keeps its stored "fr"
    assert np.array_equal(run(pool, "basic", recompute_language=True), pairs_of([0, 2]))


def test_basic_reads_scores_caption_counts_and_counts_only_without_them(tmp_path):
    """score writes caption_words/caption_length; basic uses them instead of recounting (a table that
    lacks them, like DataComp's metadata, is counted)."""
    rows = [dict(uid=uid(i), text="one two three four", original_width=300, original_height=300, language="en")
            for i in range(3)]
    plain = pd.DataFrame(rows)
    plain.to_parquet(tmp_path / "plain.parquet")
    stored = plain.assign(caption_words=[4, 2, 4], caption_length=[18, 18, 3])  # rows 1 and 2 fail on counts
    stored.to_parquet(tmp_path / "stored.parquet")
    basic = get_filter("basic")
    assert basic(ScoredPool([tmp_path / "plain.parquet"])) == UidSet.from_hex([uid(i) for i in range(3)])
    assert basic(ScoredPool([tmp_path / "stored.parquet"])) == UidSet.from_hex([uid(0)])
