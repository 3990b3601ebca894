"""File formats: uid pairs, subset files, embeddings alignment, atomic writes, config parsing."""

from __future__ import annotations

import numpy as np
import pytest

from poolsieve.core import formats
from poolsieve.core.config import build, load_config
from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.uids import UidSet, find_duplicates, hex_to_keys, pairs_to_uids, uids_to_pairs


def test_uid_pair_round_trip_matches_datacomp_definition():
    uids = ["0123456789abcdef0123456789abcdef", "ffffffffffffffff0000000000000001", "00" * 16]
    pairs = uids_to_pairs(uids)
    assert pairs.dtype == np.dtype("u8,u8")
    for uid, (hi, lo) in zip(uids, pairs.tolist(), strict=True):
        assert (hi, lo) == (int(uid[:16], 16), int(uid[16:32], 16))
    assert pairs_to_uids(pairs) == uids


@pytest.mark.parametrize("bad", ["0123", "g" * 32, "0123456789ABCDEF0123456789abcdef", "0" * 33])
def test_bad_uid_is_refused_with_row(bad):
    with pytest.raises(InputError, match="bad uid .* at row 1"):
        uids_to_pairs(["0" * 32, bad], source="x.parquet")


def test_subset_write_sorts_dedups_and_reads_back(tmp_path):
    pairs = uids_to_pairs(["f" * 32, "0" * 32, "f" * 32, "1" * 32])
    path = formats.write_subset(tmp_path / "s.npy", pairs)
    back = formats.read_subset(path)
    assert pairs_to_uids(back) == ["0" * 32, "1" * 32, "f" * 32]


def test_subset_validation_errors(tmp_path):
    unsorted = uids_to_pairs(["f" * 32, "0" * 32])
    np.save(tmp_path / "unsorted.npy", unsorted)
    with pytest.raises(InputError, match="not sorted"):
        formats.read_subset(tmp_path / "unsorted.npy")
    np.save(tmp_path / "dtype.npy", np.arange(4, dtype=np.int64))
    with pytest.raises(InputError, match="dtype"):
        formats.read_subset(tmp_path / "dtype.npy")
    repeated = uids_to_pairs(["0" * 32, "0" * 32])
    np.save(tmp_path / "rep.npy", repeated)
    with pytest.raises(InputError, match="repeated"):
        formats.read_subset(tmp_path / "rep.npy")
    assert len(formats.read_subset(tmp_path / "rep.npy", allow_repeats=True)) == 2


def test_uidset_membership_is_a_sorted_lookup():
    subset = UidSet.from_hex(["3" * 32, "1" * 32, "3" * 32])
    pool = hex_to_keys(["0" * 32, "1" * 32, "2" * 32, "3" * 32, "4" * 32])
    assert subset.isin(pool).tolist() == [False, True, False, True, False]
    assert subset.to_hex() == ["1" * 32, "3" * 32] and "3" * 32 in subset and "2" * 32 not in subset


def test_uidset_algebra_matches_python_sets():
    rng = np.random.default_rng(3)
    a_hex = [f"{v:032x}" for v in rng.integers(0, 2**62, 300)] + ["00" * 16, "ff" * 16]
    b_hex = a_hex[::3] + [f"{v:032x}" for v in rng.integers(0, 2**62, 100)]
    a, b = UidSet.from_hex(a_hex), UidSet.from_hex(b_hex)
    assert set((a & b).to_hex()) == set(a_hex) & set(b_hex)
    assert set((a | b).to_hex()) == set(a_hex) | set(b_hex)
    assert set((a - b).to_hex()) == set(a_hex) - set(b_hex)
    assert (a | b).to_hex() == sorted(set(a_hex) | set(b_hex))  # byte order is numeric order
    pairs = (a | b).to_pairs()
    assert [(int(u[:16], 16), int(u[16:], 16)) for u in (a | b).to_hex()] == pairs.tolist()


def test_uidset_written_as_is_and_read_back(tmp_path):
    uids = UidSet.from_hex(["f" * 32, "0" * 32, "1" * 32])
    path = formats.write_subset(tmp_path / "s.npy", uids)
    assert np.load(path).tolist() == uids.to_pairs().tolist()
    assert formats.read_uidset(path) == uids


def test_arrow_uid_column_checks():
    import pyarrow as pa

    good = pa.chunked_array([["1" * 32, "2" * 32], ["3" * 32]])
    assert hex_to_keys(good).tolist() == hex_to_keys(["1" * 32, "2" * 32, "3" * 32]).tolist()
    with pytest.raises(InputError, match=r"x\.parquet: uid missing at row 1"):
        hex_to_keys(pa.array(["1" * 32, None]), source="x.parquet")
    with pytest.raises(InputError, match="column uid has type int64"):
        hex_to_keys(pa.array([1, 2]), source="x.parquet")
    with pytest.raises(InputError, match="bad uid 'G{32}' at row 1"):
        hex_to_keys(pa.array(["1" * 32, "G" * 32]))
    assert find_duplicates(hex_to_keys(["1" * 32, "2" * 32, "1" * 32]))[0].tolist() == [2]


def test_embeddings_must_align_with_rows(tmp_path):
    formats.write_embeddings(tmp_path / "e.npz", {"b32_img": np.ones((3, 4)), "b32_txt": np.ones((3, 4))})
    got = formats.read_embeddings(tmp_path / "e.npz", ["b32_img"], n_rows=3)
    assert got["b32_img"].dtype == np.float16
    with pytest.raises(InputError, match="misaligned"):
        formats.read_embeddings(tmp_path / "e.npz", ["b32_img"], n_rows=4)
    with pytest.raises(InputError, match="missing embedding key"):
        formats.read_embeddings(tmp_path / "e.npz", ["l14_img"], n_rows=3)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), formats.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_model_keys_follow_datacomp():
    assert formats.model_key("ViT-B-32", "openai") == "b32"
    assert formats.score_column("l14") == "clip_l14_similarity_score"
    assert formats.embedding_keys("b32") == ("b32_img", "b32_txt")
    assert formats.model_key("poolsieve-tiny", "/x/epoch_1.pt") == "poolsieve_tiny"


def test_metadata_without_uid_is_named(tmp_path):
    import pandas as pd

    pd.DataFrame({"url": ["http://127.0.0.1/x.jpg"], "text": ["a"]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(InputError, match=r"m\.parquet: missing column\(s\) uid"):
        formats.read_metadata(tmp_path / "m.parquet")


def test_config_errors(tmp_path):
    from dataclasses import dataclass

    bad = tmp_path / "bad.yaml"
    bad.write_text("score: {models: [a\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_config(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(tmp_path / "list.yaml")

    @dataclass
    class C:
        threads: int = 4
        name: str = "x"

    assert build(C, {"threads": 8}, "download").threads == 8
    assert build(C, {"threads": 8}, "download", {"threads": 2, "name": None}).threads == 2
    with pytest.raises(ConfigError, match="unknown key"):
        build(C, {"thread": 8}, "download")
    with pytest.raises(ConfigError, match="expected a number"):
        build(C, {"threads": "many"}, "download")
