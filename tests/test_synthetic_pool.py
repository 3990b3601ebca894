"""The built-in pool generator: schema, uid format, defect rates, determinism, truthful labels."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from poolsieve.core.formats import read_metadata
from poolsieve.core.shapes import generate_clean_pairs
from poolsieve.core.uids import is_valid_uid, uids_to_pairs
from poolsieve.pipeline.demo.synthetic_pool import (
    DEFAULT_DEFECT_RATES,
    DIFFICULTY_COLUMN,
    EVAL_IMAGE_SIZE,
    FOREIGN_TEMPLATES,
    LABEL_COLUMN,
    RETRIEVAL_TASK,
    SHORT_CAPTIONS,
    PoolSpec,
    eval_leaks,
    evaluation_images,
    generate_pool,
)

N = 600
SPEC = PoolSpec(num_samples=N, samples_per_file=250, image_size=96, seed=3, base_url="http://127.0.0.1:9999",
                eval_samples=100, retrieval_samples=40, target_samples=30)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame, dict]:
    root = tmp_path_factory.mktemp("pool")
    summary = generate_pool(root, SPEC)
    files = sorted((root / "metadata").glob("*.parquet"))
    meta = pd.concat([read_metadata(f) for f in files], ignore_index=True)
    labels = pd.read_parquet(root / "synthetic" / "labels.parquet")
    return root, meta, labels, summary


def test_schema_files_and_uids(pool) -> None:
    root, meta, labels, summary = pool
    files = sorted(p.name for p in (root / "metadata").glob("*.parquet"))
    assert files == ["00000.parquet", "00001.parquet", "00002.parquet"]
    assert [len(pd.read_parquet(root / "metadata" / f)) for f in files] == [250, 250, 100]
    assert summary["samples"] == N and summary["metadata_files"] == 3
    # CommonPool's columns first and unchanged; poolsieve's label columns after them, prefixed
    assert list(meta.columns) == ["uid", "url", "text", "original_width", "original_height", "sha256",
                                  LABEL_COLUMN, DIFFICULTY_COLUMN]
    assert meta["uid"].map(is_valid_uid).all() and meta["uid"].is_unique
    assert len(uids_to_pairs(meta["uid"].to_numpy())) == N
    assert (meta["url"] == SPEC.base_url + "/images/" + meta["uid"] + ".jpg").all()
    assert list(labels["uid"]) == list(meta["uid"])
    assert set(labels.columns) >= {"shape", "colour", "defect", "language", "caption_shape", "caption_colour",
                                   "difficulty"}
    assert list(meta[LABEL_COLUMN]) == list(labels["defect"])
    assert list(meta[DIFFICULTY_COLUMN]) == list(labels["difficulty"])


def test_defect_rates_within_tolerance(pool) -> None:
    _, _, labels, summary = pool
    counts = labels["defect"].value_counts().to_dict()
    for defect, rate in DEFAULT_DEFECT_RATES.items():
        assert abs(counts.get(defect, 0) / N - rate) <= 0.005, defect
    assert counts["none"] == N - sum(round(r * N) for r in DEFAULT_DEFECT_RATES.values())
    assert summary["defects"] == counts


def test_images_bytes_sizes_and_hashes(pool) -> None:
    root, meta, labels, _ = pool
    rows = meta.merge(labels, on="uid")
    for r in rows.itertuples():
        data = (root / "synthetic" / "images" / f"{r.uid}.jpg").read_bytes()
        assert hashlib.sha256(data).hexdigest() == r.sha256
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.size == (r.original_width, r.original_height)
        if r.defect == "too_small":
            assert max(im.size) < 100
        elif r.defect == "eval_copy":
            assert im.size == (EVAL_IMAGE_SIZE, EVAL_IMAGE_SIZE)
        elif r.defect == "extreme_aspect":
            assert max(im.size) / min(im.size) >= 3
        else:
            assert im.size == (SPEC.image_size, SPEC.image_size)


def test_captions_follow_the_defects(pool) -> None:
    _, meta, labels, _ = pool
    rows = meta.merge(labels, on="uid")
    clean = rows[rows["defect"] == "none"]
    assert all(r.shape in r.text and r.colour in r.text for r in clean.itertuples())
    mismatched = rows[rows["defect"] == "mismatched_caption"]
    assert all(r.caption_shape != r.shape and r.caption_colour != r.colour for r in mismatched.itertuples())
    assert all(r.caption_shape in r.text and r.shape not in r.text for r in mismatched.itertuples())
    foreign = rows[rows["defect"] == "non_english"]
    assert set(foreign["language"]) <= set(FOREIGN_TEMPLATES) and (foreign["language"] != "en").all()
    assert not any(r.shape in r.text.split() for r in foreign.itertuples() if r.shape != "triangle")
    assert set(rows.loc[rows["defect"] == "short_caption", "text"]) <= set(SHORT_CAPTIONS)
    dups = rows[rows["defect"] == "duplicate_image"]
    clean_hashes = set(clean["sha256"])
    assert len(dups) and dups["sha256"].isin(clean_hashes).all()
    assert dups["copy_of"].isin(set(clean["uid"])).all()
    position = {u: i for i, u in enumerate(rows["uid"])}
    after = [position[r.uid] > position[r.copy_of] for r in dups.itertuples()]
    assert sum(after) >= 0.9 * len(after)  # keeping the first of a group keeps the original
    off = rows[rows["defect"] == "off_task"]
    assert len(off) and not any(s in t for t in off["text"] for s in ("circle", "square", "triangle"))


def test_near_duplicates_are_close_but_not_equal(pool) -> None:
    root, meta, labels, _ = pool
    rows = meta.merge(labels, on="uid").set_index("uid")
    near = rows[rows["defect"] == "near_duplicate"]
    assert len(near) and not near["sha256"].isin(set(rows.loc[rows["defect"] == "none", "sha256"])).any()

    def pixels(uid: str) -> np.ndarray:
        with Image.open(root / "synthetic" / "images" / f"{uid}.jpg") as im:
            return np.asarray(im.convert("L").resize((16, 16)), dtype=np.float64)

    for uid, r in near.iterrows():
        source = rows.loc[r.copy_of]
        assert source.defect == "none" and (source.shape, source.colour) == (r.shape, r.colour)
        other = rows[(rows["defect"] == "none") & (rows.index != r.copy_of)].index[0]
        assert np.abs(pixels(uid) - pixels(r.copy_of)).mean() < np.abs(pixels(uid) - pixels(other)).mean()


def test_easy_and_hard_examples(pool) -> None:
    _, _, labels, summary = pool
    shapes = labels[labels["defect"].isin(["none", "mismatched_caption", "non_english", "short_caption"])]
    assert set(shapes["difficulty"]) == {"easy", "hard"}
    assert abs((shapes["difficulty"] == "hard").mean() - SPEC.hard_rate) < 0.08
    assert summary["hard"] == int((labels["difficulty"] == "hard").sum())


def test_evaluation_sets_and_no_unlabelled_leak(pool) -> None:
    root, meta, labels, _ = pool
    tars = sorted(p.name for p in (root / "synthetic" / "eval_images").glob("*.tar"))
    assert tars == sorted(["synthetic_shape.tar", "synthetic_colour.tar", f"{RETRIEVAL_TASK}.tar"])
    task = root / "synthetic" / "tasks" / RETRIEVAL_TASK
    assert (task / "dataset_type.txt").read_text().strip() == "retrieval"
    assert (task / "test" / "0.tar").is_file() and (root / "synthetic" / "target" / "target.tar").is_file()
    # the classification images are exactly those the evaluate stage draws for the synthetic tasks
    from poolsieve.eval.synthetic_tasks import make_synthetic_task

    ours = [im.jpeg for im in evaluation_images(SPEC) if im.task == "synthetic_shape"]
    assert ours[:20] == make_synthetic_task("synthetic_shape", 20).images
    # byte copies of evaluation images: exactly the planted, labelled ones
    leaks = eval_leaks(root)
    planted = set(meta.loc[meta[LABEL_COLUMN] == "eval_copy", "uid"])
    assert planted and set(leaks["uid"]) == planted
    assert (leaks[LABEL_COLUMN] == "eval_copy").all()


def test_deterministic_and_seed_dependent(pool, tmp_path: Path) -> None:
    root, meta, _, _ = pool
    generate_pool(tmp_path / "again", SPEC)
    again = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "again" / "metadata").glob("*.parquet"))],
                      ignore_index=True)
    pd.testing.assert_frame_equal(meta.reset_index(drop=True), again)
    other = PoolSpec(num_samples=50, samples_per_file=50, image_size=64, seed=4)
    generate_pool(tmp_path / "other", other)
    assert not set(pd.read_parquet(tmp_path / "other" / "metadata" / "00000.parquet")["uid"]) & set(meta["uid"])


def test_bad_specs_and_clean_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown defect"):
        generate_pool(tmp_path, PoolSpec(num_samples=5, defect_rates={"blurry": 0.1}))
    with pytest.raises(ValueError, match="more than 1"):
        generate_pool(tmp_path, PoolSpec(num_samples=5, defect_rates={"too_small": 0.6, "non_english": 0.6}))
    pairs = list(generate_clean_pairs(20, seed=1, image_size=32))
    assert len(pairs) == 20 and all(is_valid_uid(p[0]) for p in pairs)
    assert all(p[3] in p[2] and p[4] in p[2] for p in pairs)
    assert [p[0] for p in pairs] == [p[0] for p in generate_clean_pairs(20, seed=1, image_size=32)]
