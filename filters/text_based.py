"""``text_based``: DataComp's text-based baseline, and a class-name variant.

* ``text_based`` (DataComp's): keeps an English caption (fastText lid.176, as ``basic`` reads it)
  with a word whose first WordNet synset is one of the 21,843 ImageNet-21k classes. Words are
  ``text.split()`` (whitespace only: ``"necklace."`` is a word WordNet does not have, ``"Dogs"``
  is lower-cased and reduced to ``dog`` by nltk's morphology); a word's first synset is the first of
  nltk's ``wordnet.synsets(word)`` (nouns, then verbs, adjectives, adverbs), compared by WordNet
  offset with the ImageNet-21k ids (``core/wordnet.py``: WordNet 3.0 from Debian's ``wordnet-base``
  and ``wordnet-sense-index``, the synset list from timm). Each distinct word is looked up once.
* ``text_based_in1k``: English captions that contain a class name of a clip_benchmark task
  (``classes: imagenet1k`` by default; any key of its ``en_classnames.json``, or a list of names).
  Names and captions are lower-cased and every run of characters other than letters and digits
  becomes one space (``"T-shirt"`` matches ``"t shirt"``); a parenthesised note in a class name is
  dropped and ``"a / b"`` gives both ``a`` and ``b``; a class name matches a run of whole words, also
  with a plural ``s`` / ``es`` (``"tiger sharks"`` names ``tiger shark``). Vectorised: the captions'
  word n-grams are looked up in a hash set with pyarrow.

Parameters: ``language: en`` (``null`` for any language), ``recompute_language: false``; the class-name
variant also ``classes``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poolsieve.core.errors import ConfigError
from poolsieve.core.language import as_string_array
from poolsieve.core.uids import UidSet
from poolsieve.core.wordnet import first_sense_in_imagenet21k, imagenet21k_offsets, wordnet_dir

from .basic import language_mask
from .columns import per_table
from .registry import ScoredPool, register

_NON_WORD = re.compile(r"[^\w]+|_+")
_NOTE = re.compile(r"\([^)]*\)")


def classnames_file() -> Path:
    spec = importlib.util.find_spec("clip_benchmark")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("text_based_in1k needs clip_benchmark (pip install clip_benchmark) for its class names")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "en_classnames.json"


@functools.lru_cache(maxsize=8)
def task_classnames(task: str) -> tuple[str, ...]:
    table = json.loads(classnames_file().read_text())
    if task not in table:
        raise ConfigError(f"text_based_in1k: no class names for {task!r}; clip_benchmark has {', '.join(sorted(table))}")
    return tuple(table[task])


def normalize_name(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def class_phrases(names: Sequence[str]) -> list[str]:
    """Normalised phrases a caption may contain to name one of ``names`` (plural forms included)."""
    phrases: set[str] = set()
    for name in names:
        for alternative in _NOTE.sub(" ", name).split("/"):
            phrase = normalize_name(alternative)
            if phrase:
                phrases.update((phrase, phrase + "s", phrase + "es"))
    return sorted(phrases)


def names_class(texts: Any, phrases: Sequence[str], max_words: int) -> np.ndarray:
    """Boolean mask: which captions (pyarrow string array) contain one of ``phrases`` as whole words."""
    texts = as_string_array(texts)
    n = len(texts)
    hit = np.zeros(n, dtype=bool)
    if n == 0:
        return hit
    words_lists = pc.split_pattern(
        pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(texts.fill_null("")), r"[^\pL\pN]+", " ")),
        " ")
    parents = np.asarray(pc.list_parent_indices(words_lists))
    words = words_lists.flatten()
    nonempty = np.asarray(pc.greater(pc.binary_length(words), 0).to_numpy(zero_copy_only=False), dtype=bool)
    words, parents = words.filter(pa.array(nonempty)), parents[nonempty]
    value_set = pa.array(phrases, type=pa.string())
    gram = words
    for size in range(1, max_words + 1):
        if size > 1:
            if len(words) < size:
                break
            gram = pc.binary_join_element_wise(gram.slice(0, len(words) - size + 1), words.slice(size - 1), " ")
        same_caption = parents[: len(gram)] == parents[size - 1:]
        found = np.asarray(pc.is_in(gram, value_set=value_set).to_numpy(zero_copy_only=False), dtype=bool)
        hit[parents[: len(gram)][found & same_caption]] = True
    return hit


def decide_class_names(table: Any, phrases: Sequence[str], max_words: int, language: str | None,
                       recompute_language: bool) -> np.ndarray:
    named = names_class(table["text"], phrases, max_words)
    return named if language is None else language_mask(table, named, language, recompute_language)


def names_imagenet21k_synset(texts: Any) -> np.ndarray:
    """Boolean mask: which captions have a word (``text.split()``) whose first WordNet synset is an
    ImageNet-21k class. A missing caption has no words."""
    texts = as_string_array(texts)
    hit = np.zeros(len(texts), dtype=bool)
    if len(texts) == 0:
        return hit
    pieces = pc.utf8_split_whitespace(texts.fill_null(""))  # the same separators as str.split()
    parents = np.asarray(pc.list_parent_indices(pieces))
    words = pieces.flatten()
    nonempty = np.asarray(pc.greater(pc.binary_length(words), 0).to_numpy(zero_copy_only=False), dtype=bool)
    if not nonempty.any():
        return hit
    encoded = pc.dictionary_encode(words.filter(nonempty))
    word_hit = first_sense_in_imagenet21k(encoded.dictionary.to_pylist())
    hit[parents[nonempty][word_hit[np.asarray(encoded.indices)]]] = True
    return hit


def decide_text_based(table: Any, language: str | None, recompute_language: bool) -> np.ndarray:
    named = names_imagenet21k_synset(table["text"])
    return named if language is None else language_mask(table, named, language, recompute_language)


@register("text_based")
def text_based(pool: ScoredPool, *, language: str | None = "en", recompute_language: bool = False) -> UidSet:
    """DataComp's text-based cut: English captions with a word whose first WordNet sense is an ImageNet-21k class."""
    wordnet_dir(), imagenet21k_offsets()  # missing WordNet files or synset list: one error, here
    decide = partial(decide_text_based, language=language, recompute_language=bool(recompute_language))
    return per_table(pool, decide, ["text"], "text_based", optional=["language"])


@register("text_based_in1k")
def text_based_in1k(pool: ScoredPool, *, classes: str | list[str] = "imagenet1k", language: str | None = "en",
                    recompute_language: bool = False) -> UidSet:
    """English captions that name a class of ``classes`` (a clip_benchmark task or a list of names)."""
    names = task_classnames(classes) if isinstance(classes, str) else [str(c) for c in classes]
    phrases = class_phrases(names)
    if not phrases:
        raise ConfigError("text_based_in1k: no class names to look for")
    max_words = max(len(p.split()) for p in phrases)
    decide = partial(decide_class_names, phrases=phrases, max_words=max_words, language=language,
                     recompute_language=bool(recompute_language))
    return per_table(pool, decide, ["text"], "text_based_in1k", optional=["language"])
