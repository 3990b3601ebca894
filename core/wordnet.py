"""WordNet 3.0 and the ImageNet-21k synset list, the two lookups DataComp's text-based baseline uses.

* WordNet: the Princeton WordNet 3.0 dict files (Debian's ``wordnet-base`` + ``wordnet-sense-index``
  put them in ``/usr/share/wordnet``; set ``POOLSIEVE_WORDNET_DIR`` for another folder), read with
  nltk's WordNet reader, so a word's synsets, in nltk's order, are those DataComp's ``nltk`` sees.
  Debian does not ship the ``lexnames`` file nltk's reader opens; its 45 lines (the lexicographer
  files of WordNet 3.0, ``lexnames(5WN)``) are supplied here when the folder lacks it.
* ImageNet-21k: the 21,843 WordNet noun ids of ``imagenet21k_goog_synsets.txt``, read from timm's
  package data and checked against the sha256 DataComp pins for its copy of the same list.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

WORDNET_ENV_VAR = "POOLSIEVE_WORDNET_DIR"
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")) + \
    tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
INSTALL_HINT = ("apt-get install wordnet-base wordnet-sense-index (Debian/Ubuntu), or set "
                f"{WORDNET_ENV_VAR} to a WordNet 3.0 dict folder")

IMAGENET21K_FILE = "imagenet21k_goog_synsets.txt"
IMAGENET21K_SHA256 = "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2"
IMAGENET21K_SIZE = 21_843

_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl",
)
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def lexnames_text() -> str:
    """WordNet 3.0's ``lexnames`` file: ``NN<TAB>name<TAB>syntactic category`` per line."""
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


def wordnet_dir() -> Path:
    """The WordNet 3.0 dict folder: ``$POOLSIEVE_WORDNET_DIR`` or Debian's ``/usr/share/wordnet``."""
    override = os.environ.get(WORDNET_ENV_VAR)
    folder = Path(override) if override else DEBIAN_WORDNET_DIR
    missing = [name for name in WORDNET_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"WordNet 3.0 not found in {folder} (missing {', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}): {INSTALL_HINT}")
    return folder


@functools.lru_cache(maxsize=2)
def _reader(folder: str) -> Any:
    try:
        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise ConfigError("the text-based filter needs nltk (pip install nltk)") from None
    if folder not in nltk.data.path:
        nltk.data.path.append(folder)  # nltk reads only below its data paths

    class DebianWordNetReader(WordNetCorpusReader):
        """nltk's reader; a folder without ``lexnames`` (Debian's) gets WordNet 3.0's list."""

        def open(self, fileid: str) -> Any:
            if fileid == "lexnames" and not (Path(folder) / fileid).is_file():
                return io.StringIO(lexnames_text())
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            """No mapping to nltk's own ``wordnet`` data package (used for other languages only)."""
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": English only here
        warnings.simplefilter("ignore")
        return DebianWordNetReader(folder, None)


def wordnet_reader() -> Any:
    """nltk's WordNet reader over ``wordnet_dir()``, loaded once per process."""
    return _reader(str(wordnet_dir()))


def imagenet21k_file() -> Path:
    """timm's copy of the ImageNet-21k synset list (one ``n########`` WordNet noun id a line)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the text-based filter needs timm (pip install timm): it ships {IMAGENET21K_FILE}")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "_info" / IMAGENET21K_FILE


@functools.lru_cache(maxsize=1)
def imagenet21k_offsets() -> frozenset[int]:
    """The WordNet offsets (``int("n02084071"[1:])``) of the 21,843 ImageNet-21k classes."""
    path = imagenet21k_file()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the ImageNet-21k synset list ({e.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != IMAGENET21K_SHA256:
        raise ConfigError(f"{path}: sha256 {digest} is not the list DataComp uses ({IMAGENET21K_SHA256})")
    ids = data.decode("ascii").split()
    offsets = frozenset(int(i[1:]) for i in ids)
    if len(ids) != IMAGENET21K_SIZE or len(offsets) != IMAGENET21K_SIZE:
        raise ConfigError(f"{path}: expected {IMAGENET21K_SIZE:,} distinct synset ids, got {len(offsets):,}")
    return offsets


_FIRST_OFFSET_CACHE: dict[str, int] = {}
_CACHE_LIMIT = 4_000_000


def first_synset_offset(word: str) -> int:
    """WordNet offset of ``wordnet.synsets(word)[0]`` as nltk orders them (-1 when there is none).

    nltk lower-cases the word and walks nouns, verbs, adjectives, adverbs; for each, the morphological
    base forms (exception lists first, then suffix rules) and their senses in index order. Only the
    first sense's offset is needed, so it is read from nltk's lemma index without building synsets
    (tests check it equals ``synsets(word)[0].offset()``).
    """
    cached = _FIRST_OFFSET_CACHE.get(word)
    if cached is not None:
        return cached
    reader = wordnet_reader()
    lemma = word.lower()
    index = reader._lemma_pos_offset_map
    offset = -1
    for pos in ("n", "v", "a", "r"):
        for form in reader._morphy(lemma, pos, True):
            offsets = index[form].get(pos)
            if offsets:
                offset = offsets[0]
                break
        if offset >= 0:
            break
    if len(_FIRST_OFFSET_CACHE) >= _CACHE_LIMIT:
        _FIRST_OFFSET_CACHE.clear()
    _FIRST_OFFSET_CACHE[word] = offset
    return offset


def first_sense_in_imagenet21k(words: list[str]) -> np.ndarray:
    """For each word: is its first WordNet synset one of the ImageNet-21k classes (by offset, as DataComp
    compares)?"""
    classes = imagenet21k_offsets()
    return np.fromiter((first_synset_offset(w) in classes for w in words), dtype=bool, count=len(words))
