"""``text_based`` is DataComp's text-based baseline: a word (``text.split()``) whose first WordNet synset
is an ImageNet-21k class, in an English caption. Expectations below were worked out by hand from
WordNet 3.0's sense order (needs Debian's ``wordnet-base`` + ``wordnet-sense-index``)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import ConfigError
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.wordnet import (
    IMAGENET21K_SIZE,
    WORDNET_ENV_VAR,
    first_sense_in_imagenet21k,
    first_synset_offset,
    imagenet21k_offsets,
    wordnet_dir,
    wordnet_reader,
)
from poolsieve.filters.registry import ScoredPool, get_filter


def uid(i: int) -> str:
    return f"{(0x9E3779B97F4A7C15 * (i + 1)) % 2**64:016x}{i:016x}"


def pairs_of(indices) -> np.ndarray:
    return np.sort(uids_to_pairs([uid(i) for i in indices]), order=["f0", "f1"])


# index -> caption; the comment names the word that decides
CAPTIONS = {
    0: "a photo of a necklace",            # necklace.n.01 is an ImageNet-21k class
    1: "a red necklace.",                  # "necklace." is not a WordNet word (split keeps punctuation)
    2: "Necklaces for the wedding",        # lower-cased, plural reduced by nltk's morphology
    3: "the tiger at sunset",              # tiger.n.01 is "a fierce or audacious person": not a class
    4: "three tigers running",             # "tigers" is a lemma itself (the Tamil Tigers): not a class
    5: "SHARKS\tin the\u3000sea",          # any Unicode whitespace splits; shark.n.01 is a class
    6: "a passionate speech",              # passionate.a.01's offset equals a class's noun offset
    7: "wearing a T-shirt",                # T-shirt -> jersey.n.03, a class
    8: "tshirt",                           # no synset
    9: None,                               # no caption
    10: "",                               # no words
    11: "le chat et la pizza sur la table",  # pizza is a class, but the caption is French
    12: "gold necklace, silver ring",       # "necklace," is no word, ring.n.01 is a class
}
WORDNET_HITS = [0, 2, 5, 6, 7, 11, 12]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_pool")
    pd.DataFrame({"uid": [uid(i) for i in CAPTIONS], "text": list(CAPTIONS.values())}).to_parquet(root / "0.parquet")
    return ScoredPool([root / "0.parquet"])


def run(pool, name, **params) -> np.ndarray:
    return get_filter(name)(pool, **params).to_pairs()


def test_imagenet21k_list_is_datacomps():
    offsets = imagenet21k_offsets()  # sha256 checked against DataComp's pin on load
    assert len(offsets) == IMAGENET21K_SIZE
    reader = wordnet_reader()
    assert reader.synset("necklace.n.01").offset() in offsets
    assert reader.synset("tiger.n.02").offset() in offsets and reader.synset("tiger.n.01").offset() not in offsets


def test_first_sense_lookup_by_hand():
    words = ["necklace", "necklace.", "Necklaces", "tiger", "tigers", "SHARKS", "passionate", "T-shirt", "the"]
    assert first_sense_in_imagenet21k(words).tolist() == [True, False, True, False, False, True, True, True, False]
    assert first_synset_offset("the") == -1
    assert first_synset_offset("Dogs") == wordnet_reader().synset("dog.n.01").offset()


def test_first_offset_is_nltks_first_synset():
    """The index walk gives ``synsets(word)[0].offset()`` for words with inflections, case and punctuation."""
    reader = wordnet_reader()
    lemmas = sorted(reader.all_lemma_names())
    rng = random.Random(0)
    words = []
    for lemma in rng.sample(lemmas, 600):
        words += [lemma, lemma.upper(), lemma + "s", lemma + "es", lemma + "ing", lemma + "ed", lemma + "."]
    for word in words:
        synsets = reader.synsets(word)
        assert first_synset_offset(word) == (synsets[0].offset() if synsets else -1), word


def test_text_based_is_datacomps(pool):
    assert np.array_equal(run(pool, "text_based", language=None), pairs_of(WORDNET_HITS))
    # English only (fastText): the French caption 11 goes
    assert np.array_equal(run(pool, "text_based"), pairs_of([i for i in WORDNET_HITS if i != 11]))


def test_class_name_variant_kept(pool):
    # text_based_in1k matches ImageNet-1k class names with punctuation folded ("necklace." and "necklace,"
    # name the necklace class; "T-shirt" the T-shirt class) and plurals: "tiger(s)" is a class there
    assert np.array_equal(run(pool, "text_based_in1k", language=None), pairs_of([0, 1, 2, 3, 4, 7, 11, 12]))


def test_missing_wordnet_is_one_clear_error(pool, tmp_path, monkeypatch):
    monkeypatch.setenv(WORDNET_ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match="apt-get install wordnet-base wordnet-sense-index"):
        wordnet_dir()
    with pytest.raises(ConfigError, match="WordNet 3.0 not found"):
        run(pool, "text_based")
