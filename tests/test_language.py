"""Language id and caption counts match DataComp's per-row reference logic."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from poolsieve.core.errors import InputError
from poolsieve.core.language import (
    count_chars,
    count_words,
    detect_language_codes,
    detect_languages,
    lid_model,
)

CAPTIONS = [
    "a photo of a dog playing in the park",
    "Bonjour tout le monde, voici une photo de mon chat",
    "Ein schönes Haus am See mit einem großen Garten",
    "これは猫の写真です",
    "two\nlines of english text here",
    "",
    "   ",
    "x",
    "Поездка на море летом с семьей",
]


def _reference_language(text: str) -> str:
    """DataComp's get_fasttext_language: one predict per caption, newlines replaced."""
    return lid_model().predict(text.replace("\n", " "))[0][0].split("__label__")[1]


def test_codes_match_per_row_fasttext():
    expected = [_reference_language(t) for t in CAPTIONS]
    assert detect_language_codes(CAPTIONS).tolist() == expected
    codes, conf = detect_languages(CAPTIONS)
    assert codes.tolist() == expected
    assert conf.dtype == np.float32 and ((conf > 0) & (conf <= 1)).all()
    assert expected[:3] == ["en", "fr", "de"] and expected[3] == "ja" and expected[-1] == "ru"


def test_confidence_is_fasttext_probability():
    _, conf = detect_languages(["Bonjour tout le monde, voici une photo de mon chat"])
    prob = lid_model().predict("Bonjour tout le monde, voici une photo de mon chat")[1][0]
    assert conf[0] == pytest.approx(prob, rel=1e-6)


def test_missing_caption_has_no_language():
    codes, conf = detect_languages(pa.array(["a photo of a dog playing in the park", None], type=pa.string()))
    assert codes.tolist() == ["en", ""] and conf[1] == 0.0
    assert detect_language_codes([None]).tolist() == [""]


def test_empty_input():
    codes, conf = detect_languages([])
    assert len(codes) == 0 and len(conf) == 0
    assert len(detect_language_codes([])) == 0


def test_word_and_char_counts_match_python():
    whitespace = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    texts = [*CAPTIONS, *(f"a{w}b{w}{w}c" for w in whitespace), "\u00e9t\u00e9 \U0001F600 ok", " lead trail "]
    assert count_words(texts).tolist() == [len(t.split()) for t in texts]
    assert count_chars(texts).tolist() == [len(t) for t in texts]
    chunked = pa.chunked_array([pa.array(texts[:3]), pa.array([*texts[3:], None])])
    assert count_words(chunked).tolist() == [len(t.split()) for t in texts] + [0]
    assert count_chars(chunked).tolist() == [len(t) for t in texts] + [0]


def test_missing_model_file_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("POOLSIEVE_LID_MODEL", str(tmp_path / "nope.ftz"))
    with pytest.raises(InputError, match="nope.ftz"):
        detect_language_codes(["hello"])


def test_fasttext_token_count_follows_fasttexts_tokenizer() -> None:
    """fastText's readWord: split on `` \\n\\r\\t\\v\\f\\0`` only, one end-of-sentence token per newline."""
    from poolsieve.core.language import count_fasttext_tokens

    texts = ["a\nb", "a \n b", "a\n\nb", "", None, "x\u00a0y z", "a\tb\rc", "  lead trail  ", "a\x00b", "\n"]
    assert list(count_fasttext_tokens(texts)) == [3, 3, 4, 0, 0, 2, 3, 2, 2, 1]


def test_image_based_caption_filter_counts_words_as_datacomp() -> None:
    """DataComp's image_based caption filter counts fastText tokens: 'landscape\\n' has 2, so it passes."""
    import pyarrow as pa

    from poolsieve.filters.image_based import caption_filter_mask

    table = pa.table({"text": ["landscape\n", "landscape", "a red car"], "language": ["en", "en", "en"],
                      "caption_words": [1, 1, 3], "caption_length": [10, 9, 9]})
    assert list(caption_filter_mask(table)) == [True, False, True]
