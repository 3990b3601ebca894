"""``laion2b`` is DataComp's LAION-2B reproduction: gcld3 (``min_num_bytes=0, max_num_bytes=1000``) says
English and ``clip_b32_similarity_score >= 0.28``; ``laion2b_fasttext`` is the same cut with fastText."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from poolsieve.core import language as language_module
from poolsieve.core.errors import InputError
from poolsieve.core.language import detect_gcld3_codes
from poolsieve.core.uids import uids_to_pairs
from poolsieve.filters.registry import ScoredPool, get_filter

ENGLISH = "This is a test of the language identifier, written in plain English."
FOX = "The quick brown fox jumps over the lazy dog"
FRENCH = "Bonjour, je m'appelle Pierre et j'habite à Paris."
GERMAN = "Das ist ein Test der Spracherkennung, geschrieben auf Deutsch."

# index -> (caption, b32 score, stored fastText language or None)
ROWS = {
    0: (ENGLISH, 0.30, None),
    1: (FOX.replace(" jumps", "\njumps"), 0.28, None),   # exactly the threshold; newline read as a space
    2: ("A red car parked outside the old house on a sunny afternoon", 0.2799, None),  # English, score low
    3: (FRENCH, 0.40, "en"),                                # the stored column is wrong: gcld3 decides
    4: (GERMAN, 0.35, None),
    5: ("a photo of a dog on the beach", 0.33, None),       # short: gcld3 says Irish, fastText English
    6: ("Hello world", 0.50, None),                          # gcld3 says Kyrgyz
    7: (None, 0.50, None),
    8: (FOX, float("nan"), None),
    9: (ENGLISH, 0.29, None),                               # a repeated caption
}


def uid(i: int) -> str:
    return f"{(0x9E3779B97F4A7C15 * (i + 1)) % 2**64:016x}{i:016x}"


def pairs_of(indices) -> np.ndarray:
    return np.sort(uids_to_pairs([uid(i) for i in indices]), order=["f0", "f1"])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("laion_pool")
    pd.DataFrame({"uid": [uid(i) for i in ROWS], "text": [r[0] for r in ROWS.values()],
                  "clip_b32_similarity_score": [r[1] for r in ROWS.values()],
                  "language": [r[2] for r in ROWS.values()]}).to_parquet(root / "0.parquet")
    return ScoredPool([root / "0.parquet"])


def run(pool, name, **params) -> np.ndarray:
    return get_filter(name)(pool, **params).to_pairs()


def test_gcld3_verdicts():
    codes = detect_gcld3_codes([ENGLISH, FOX, FRENCH, GERMAN, "a photo of a dog on the beach", None])
    assert codes.tolist() == ["en", "en", "fr", "de", "ga", ""]
    assert len(detect_gcld3_codes([])) == 0


def test_laion2b_is_datacomps(pool):
    assert np.array_equal(run(pool, "laion2b"), pairs_of([0, 1, 9]))
    assert np.array_equal(run(pool, "laion2b", language="fr"), pairs_of([3]))
    assert np.array_equal(run(pool, "laion2b", threshold=0.2799), pairs_of([0, 1, 2, 9]))


def test_fasttext_variant(pool):
    # fastText: the stored column for 3 ("en"), computed for the rest; short English captions pass
    assert np.array_equal(run(pool, "laion2b_fasttext"), pairs_of([0, 1, 3, 5, 6, 9]))
    assert np.array_equal(run(pool, "laion2b_fasttext", recompute_language=True), pairs_of([0, 1, 5, 6, 9]))


def test_missing_gcld3_is_one_clear_error(pool, monkeypatch):
    monkeypatch.setitem(sys.modules, "gcld3", None)  # as if it were not installed
    language_module.gcld3_model.cache_clear()
    try:
        with pytest.raises(InputError, match="protobuf-compiler libprotobuf-dev.*poolsieve\\[gcld3\\]"):
            run(pool, "laion2b")
    finally:
        language_module.gcld3_model.cache_clear()
