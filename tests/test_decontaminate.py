"""decontaminate: planted exact and near copies of evaluation images leave the pool, nothing else does."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import write_embeddings
from poolsieve.core.uids import UidSet
from poolsieve.filters.registry import ScoredPool, get_filter

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """2 score tables over 120 rows; an eval set of 20 images; rows planted as copies of some of them."""
    root = tmp_path_factory.mktemp("decon")
    rng = np.random.default_rng(5)
    ref = unit(rng.standard_normal((20, DIM)))
    ref_sha = [hashlib.sha256(f"eval{i}".encode()).hexdigest() for i in range(20)]
    (root / "references").mkdir()
    np.savez(root / "references" / "eval_tasks.npz", b32_img=ref.astype(np.float16),
             labels=np.asarray(["t"] * 20), sha256=np.asarray(ref_sha),
             sources=np.asarray([f"t/{i:03d}.png" for i in range(20)]))
    n = 60
    truth = {"exact_score": [], "exact_metadata": [], "near": [], "far_variant": []}
    (root / "scores").mkdir()
    (root / "metadata").mkdir()
    uids_all = []
    for s in range(2):
        emb = unit(rng.standard_normal((n, DIM)))
        uids = [f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**62, (n, 2))]
        sha = [hashlib.sha256(f"pool{s}-{i}".encode()).hexdigest() for i in range(n)]
        meta_sha = list(sha)
        status = np.array(["success"] * n, dtype=object)
        # row 1: same downloaded bytes as eval image 3; row 2: same bytes at the url as eval image 4
        sha[1] = ref_sha[3]
        meta_sha[2] = ref_sha[4]
        # row 3: a near copy of eval image 5 (cosine ~0.995); row 4: a loose variant of it (cosine ~0.8)
        emb[3] = unit(ref[5:6] + 0.1 * unit(rng.standard_normal((1, DIM))))[0]
        emb[4] = unit(ref[5:6] + 0.75 * unit(rng.standard_normal((1, DIM))))[0]
        # row 7 failed to decode: never a member, whatever it matches
        status[7] = "decode_error"
        sha[7] = ref_sha[0]
        truth["exact_score"].append(uids[1])
        truth["exact_metadata"].append(uids[2])
        truth["near"].append(uids[3])
        truth["far_variant"].append(uids[4])
        uids_all += [u for u, st in zip(uids, status, strict=True) if st == "success"]
        pd.DataFrame({"uid": uids, "sha256": sha, "status": status, "text": ["a photo"] * n}).to_parquet(
            root / "scores" / f"{s:05d}.parquet", index=False)
        write_embeddings(root / "scores" / f"{s:05d}.npz", {"b32_img": emb, "b32_txt": emb})
        pd.DataFrame({"uid": uids, "url": ["http://x/y.jpg"] * n, "text": ["a photo"] * n,
                      "sha256": meta_sha}).to_parquet(root / "metadata" / f"{s:05d}.parquet", index=False)
    return {"root": root, "truth": truth, "members": set(uids_all), "ref": ref}


def pool_of(root: Path) -> ScoredPool:
    return ScoredPool(sorted((root / "scores").glob("*.parquet")))


def test_exact_and_near_copies_are_dropped(planted) -> None:
    report: dict = {}
    kept = set(get_filter("decontaminate")(pool_of(planted["root"]), threshold=0.95, report=report).to_hex())
    t = planted["truth"]
    dropped = planted["members"] - kept
    assert dropped == set(t["exact_score"] + t["exact_metadata"] + t["near"])
    assert set(t["far_variant"]) <= kept
    assert {k: report[k] for k in ("exact_copies", "near_copies", "reference_images")} == {
        "exact_copies": 4, "near_copies": 2, "reference_images": 20}
    assert report["summary"] == "4 exact (sha256), 2 near-embedding (cosine >= 0.950000: fixed cosine)"
    # the matches, each with the evaluation image it matched (what the report shows beside a dropped row)
    listed = {m["uid"]: m for m in report["matches"]}
    assert set(listed) == planted["members"] - kept
    row1 = listed[t["exact_score"][0]]
    assert (row1["kind"], row1["source"], row1["label"]) == ("exact", "t/003.png", "t")
    assert (listed[t["near"][0]]["kind"], listed[t["near"][0]]["source"]) == ("near", "t/005.png")
    assert listed[t["near"][0]]["cosine"] > 0.99


def lower_median_rounded(d: np.ndarray) -> float:
    """The lower median of ``d``, rounded down to 8 significant bits (float32's top 16 bits): found by sorting."""
    m = np.array([np.sort(d)[(len(d) - 1) // 2]], dtype=np.float32)
    return float((m.view(np.uint32) >> np.uint32(16) << np.uint32(16)).view(np.float32)[0])


def test_default_rule_is_calibrated_on_the_pool(planted) -> None:
    """``threshold: auto``: near copy when 1 - cos <= 0.05 x the pool's median distance (exact copies left out
    of the median), and cos >= 0.95; the same rows as that cosine cut computed by brute force."""
    pool = pool_of(planted["root"])
    report: dict = {}
    kept = set(get_filter("decontaminate")(pool, report=report).to_hex())
    emb = pool.load_embeddings(["b32_img"])["b32_img"].astype(np.float32)
    uids = pool.read_columns([])["uid"].to_numpy()
    sims = (unit(emb) @ unit(planted["ref"].astype(np.float16).astype(np.float32)).T).max(axis=1)
    t = planted["truth"]
    exact = np.isin(uids, t["exact_score"] + t["exact_metadata"])
    median = lower_median_rounded(1.0 - sims[~exact].astype(np.float64))
    assert report["median_distance"] == pytest.approx(median, rel=1e-6)
    cut = max(1 - 0.05 * median, 0.95)
    assert report["threshold"] == pytest.approx(cut)
    assert planted["members"] - kept == set(uids[exact | (sims >= cut)])
    assert planted["members"] - kept == set(t["exact_score"] + t["exact_metadata"] + t["near"])
    assert report["summary"].startswith("4 exact (sha256), 2 near-embedding (cosine >= ")
    assert "x the pool's median distance" in report["summary"]
    # a ratio of 0 leaves the floor no say: only rows at distance 0 (none here) are near copies
    zero: dict = {}
    get_filter("decontaminate")(pool, ratio=0.0, report=zero)
    assert zero["near_copies"] == 0 and zero["exact_copies"] == 4


def test_default_is_safe_on_a_weak_scorer(tmp_path) -> None:
    """A scorer whose embeddings are all alike (every pool image at cosine ~0.99 from some evaluation image)
    made cosine 0.98 take the whole pool; the calibrated default takes the planted copies and nothing else."""
    rng = np.random.default_rng(1)
    centre = unit(rng.standard_normal((1, 32)))
    ref = unit(centre + 0.02 * rng.standard_normal((50, 32)))
    (tmp_path / "references").mkdir()
    (tmp_path / "scores").mkdir()
    np.savez(tmp_path / "references" / "eval_tasks.npz", b32_img=ref.astype(np.float16),
             sha256=np.asarray([f"{i:064x}" for i in range(50)]), labels=np.asarray(["x"] * 50))
    emb = unit(centre + 0.02 * rng.standard_normal((400, 32)))
    planted = [10, 50, 90, 130, 170]  # near copies: the same image re-encoded (the embedding moved by ~1e-4)
    emb[planted] = unit(ref[:5] + 1e-4 * rng.standard_normal((5, 32)))
    uids = [f"{i:032x}" for i in range(400)]
    pd.DataFrame({"uid": uids, "sha256": [f"{i + 1000:064x}" for i in range(400)], "status": "success"}
                 ).to_parquet(tmp_path / "scores" / "00000.parquet", index=False)
    write_embeddings(tmp_path / "scores" / "00000.npz", {"b32_img": emb, "b32_txt": emb})
    pool = pool_of(tmp_path)
    fixed = get_filter("decontaminate")(pool, threshold=0.98)
    assert len(fixed) < 0.05 * 400  # the old default removed nearly everything
    report: dict = {}
    kept = get_filter("decontaminate")(pool, report=report)
    assert set(uids) - set(kept.to_hex()) == {uids[i] for i in planted}
    assert report["near_copies"] == 5 and report["threshold"] > 0.999


def test_bad_parameters_are_one_line_errors(planted) -> None:
    pool = pool_of(planted["root"])
    for params, word in (({"threshold": "always"}, "threshold"), ({"ratio": -0.1}, "ratio"), ({"ratio": 1.0}, "ratio"),
                         ({"min_cosine": 2}, "min_cosine"), ({"ratio": True}, "ratio")):
        with pytest.raises(ConfigError, match=word):
            get_filter("decontaminate")(pool, **params)


def test_threshold_and_exact_switches(planted) -> None:
    pool = pool_of(planted["root"])
    t = planted["truth"]
    exact_only = set(get_filter("decontaminate")(pool, threshold=None).to_hex())
    assert planted["members"] - exact_only == set(t["exact_score"] + t["exact_metadata"])
    near_only = set(get_filter("decontaminate")(pool, threshold=0.95, exact=False).to_hex())
    assert planted["members"] - near_only == set(t["near"])
    # a lower threshold also takes the loose variants, exactly the rows a brute-force cosine finds
    loose = set(get_filter("decontaminate")(pool, threshold=0.5, exact=False).to_hex())
    emb = pool.load_embeddings(["b32_img"])["b32_img"].astype(np.float32)
    uids = pool.read_columns([])["uid"].to_numpy()
    sims = (unit(emb) @ planted["ref"].T).max(axis=1)
    assert planted["members"] - loose == set(uids[sims >= 0.5])
    assert set(t["far_variant"]) <= planted["members"] - loose


def test_spec_and_bad_input(planted, tmp_path) -> None:
    pool = pool_of(planted["root"])
    from poolsieve.filters.algebra import evaluate_spec

    via_spec = evaluate_spec(pool, "decontaminate(threshold=0.95) & no_filter")
    assert isinstance(via_spec, UidSet)
    assert set(via_spec.to_hex()) == set(get_filter("decontaminate")(pool, threshold=0.95).to_hex())
    with pytest.raises(ConfigError, match="threshold"):
        get_filter("decontaminate")(pool, threshold=1.5)
    with pytest.raises(ConfigError, match="nothing would be compared"):
        get_filter("decontaminate")(pool, threshold=None, exact=False)
    with pytest.raises(InputError, match="not found"):
        get_filter("decontaminate")(pool, reference="missing")
    np.savez(tmp_path / "nohash.npz", b32_img=planted["ref"].astype(np.float16), labels=np.asarray(["t"] * 20))
    with pytest.raises(InputError, match="sha256"):
        get_filter("decontaminate")(pool, reference=str(tmp_path / "nohash.npz"))


def test_reference_step_records_each_image_digest(tmp_path) -> None:
    from test_score import save_tiny_checkpoint

    from poolsieve.core.shapes import generate_clean_pairs
    from poolsieve.core.workspace import Workspace
    from poolsieve.pipeline.score.references import embed_reference
    from poolsieve.pipeline.score.stage import ScoreConfig

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt", seed=2)
    images = [p[1] for p in generate_clean_pairs(5, seed=77, image_size=32)]
    with tarfile.open(tmp_path / "eval.tar", "w") as tar:
        for i, data in enumerate([*images, b"\xff\xd8 broken"]):
            for name, payload in ((f"{i:03d}.jpg", data), (f"{i:03d}.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    ws = Workspace.create(tmp_path / "ws")
    embed_reference(ws, tmp_path / "eval.tar", "eval_tasks", ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"]),
                    quiet=True)
    with np.load(ws.reference_path("eval_tasks")) as z:
        assert list(z["sha256"]) == [hashlib.sha256(d).hexdigest() for d in images]  # the broken one left out
        assert len(z["poolsieve_tiny_img"]) == 5


def test_summary_and_report_tell_exact_and_near_copies_apart(planted, tmp_path, capsys) -> None:
    import shutil

    from poolsieve.core.runtime import Runtime
    from poolsieve.core.workspace import Workspace
    from poolsieve.pipeline.filter.stage import STAGE, FilterConfig, run_filter
    from poolsieve.pipeline.inspect.report import write_report
    from poolsieve.pipeline.inspect.stage import inspect_workspace

    ws = Workspace.create(tmp_path / "ws")
    for folder in ("scores", "references", "metadata"):
        shutil.copytree(planted["root"] / folder, ws.root / folder)
    out = run_filter(ws, FilterConfig(spec=["clean = decontaminate"]), Runtime(executor="local"))
    STAGE.report(out)
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.strip().startswith("clean: decontaminate:"))
    assert "4 exact (sha256), 2 near-embedding (cosine >= 0.9" in line and "x the pool's median distance" in line
    page = write_report(ws, inspect_workspace(ws)).read_text()
    assert "4 exact (sha256), 2 near-embedding (cosine &gt;= 0.9" in page  # the funnel's step row
    t = planted["truth"]
    assert page.count("decontaminate: exact copy of evaluation image t/00") == 4  # each dropped card says which
    assert "decontaminate: exact copy of evaluation image t/003.png (label t)" in page
    assert page.count("decontaminate: near copy (cosine 0.99") == len(t["near"]) == 2
