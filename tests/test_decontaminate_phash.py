"""decontaminate by perceptual hash (issue 26): the score stage's ``phash`` column and the reference's hashes
and thumbnails, the default rule on a generated pool scored by a tiny random CLIP (no pretrained weights),
the fallback for tables scored before the hash, and the report card with the evaluation image beside
the pool image (in Chromium)."""

from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest
from browser import Chromium, chromium_path
from factories import Sample, write_img2dataset_shards
from PIL import Image, ImageDraw, ImageOps
from test_score import save_tiny_checkpoint

from poolsieve.core.errors import InputError, PoolsieveWarning
from poolsieve.core.workspace import Workspace
from poolsieve.filters.registry import ScoredPool, get_filter
from poolsieve.pipeline.cli import main
from poolsieve.pipeline.score.phash import image_phash

ARTEFACTS = Path(os.environ.get("POOLSIEVE_TEST_ARTIFACTS") or Path(__file__).parents[1] / "test-artifacts")
COLOURS = [(220, 40, 40), (40, 160, 60), (40, 70, 200), (230, 190, 30), (150, 60, 170), (240, 130, 20)]


def picture(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A few shapes in random colours on a random background: each drawing its own picture."""
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size * 2 // 3, 2))
        x1, y1 = x0 + int(rng.integers(size // 6, size // 2)), y0 + int(rng.integers(size // 6, size // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return img


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def recoloured(img: Image.Image) -> Image.Image:
    """A look-alike: the same layout and lightness in other colours (a duotone), which phash, seeing
    lightness only, cannot tell from the original."""
    return ImageOps.colorize(img.convert("L"), (40, 0, 70), (255, 250, 150))


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """A pool of 80 drawings scored by the real score stage (tiny random CLIP), an evaluation set of 12
    drawings as ``references/eval_tasks.npz``; planted: re-encoded and resized copies, and look-alikes."""
    root = tmp_path_factory.mktemp("phash")
    rng = np.random.default_rng(26)
    evals = [picture(rng) for _ in range(12)]
    eval_dir = root / "eval"
    for i, img in enumerate(evals):
        folder = eval_dir / ("circles" if i % 2 else "squares")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.jpg").write_bytes(jpeg(img))
    eval_bytes = [jpeg(img) for img in evals]
    planted = {"reencoded": [], "resized": [], "lookalike": [], "exact": [], "clean": []}
    samples = []
    for i in range(80):
        uid = f"{i + 1:032x}"
        if i < 4:
            kind, data = "reencoded", jpeg(Image.open(io.BytesIO(eval_bytes[i])), quality=70)
        elif i < 6:
            kind, data = "resized", jpeg(evals[i].resize((160, 160), Image.BICUBIC), quality=85)
        elif i < 9:
            kind, data = "lookalike", jpeg(recoloured(evals[i]))
        elif i < 10:
            kind, data = "exact", eval_bytes[i]
        else:
            kind, data = "clean", jpeg(picture(rng))
        planted[kind].append(uid)
        samples.append(Sample(uid, data, f"a drawing number {i}"))
    cut = jpeg(picture(rng))
    samples.append(Sample(f"{999:032x}", cut[:len(cut) // 2], "cut in half"))  # its header reads, no more
    ws = Workspace.create(root / "ws")
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=45)
    model = f"poolsieve-tiny:{save_tiny_checkpoint(root / 'tiny.pt', seed=3)}"
    assert main(["score", "-w", str(ws.root), "--executor", "local", "--model", model, "--no-language"]) == 0
    assert main(["score", "-w", str(ws.root), "--executor", "local", "--model", model, "--reference",
                 str(eval_dir), "--name", "eval_tasks"]) == 0
    return {"ws": ws, "planted": planted, "eval_bytes": eval_bytes, "samples": samples, "root": root}


def pool_of(ws: Workspace) -> ScoredPool:
    return ScoredPool(sorted(ws.scores_dir.glob("*.parquet")))


def hashes_by_uid(ws: Workspace) -> dict[str, int | None]:
    out = {}
    for table in sorted(ws.scores_dir.glob("*.parquet")):
        t = pq.read_table(table, columns=["uid", "phash"])
        assert t.schema.field("phash").type == "uint64"
        out.update(zip(t["uid"].to_pylist(), t["phash"].to_pylist(), strict=True))
    return out


def test_score_writes_the_perceptual_hash_of_the_decoded_image(scored) -> None:
    ws, planted = scored["ws"], scored["planted"]
    phash = hashes_by_uid(ws)
    assert phash[f"{999:032x}"] is None  # the image that did not decode has no hash
    for s in scored["samples"][:-1]:  # imagehash's phash of the decoded image, its 64 bits as one uint64
        assert phash[s.uid] == int(str(imagehash.phash(Image.open(io.BytesIO(s.jpeg)))), 16)
    with np.load(ws.reference_path("eval_tasks")) as z:
        order = [int(Path(str(src)).stem) for src in z["sources"]]  # class folders in name order
        assert z["phash"].dtype == np.uint64 and z["phash_valid"].all()
        ref = dict(zip(order, z["phash"].tolist(), strict=True))
        assert ref == {i: image_phash(Image.open(io.BytesIO(b))) for i, b in enumerate(scored["eval_bytes"])}
        offsets, data = z["thumbnail_offsets"], z["thumbnails"]
        first = Image.open(io.BytesIO(data[offsets[0]:offsets[1]].tobytes()))
        assert first.format == "JPEG" and max(first.size) <= 64
    # a re-encoded copy (quality 92 -> 70) hashes as its original or within 2 bits; resized copies within 4
    bits = [(phash[uid] ^ ref[i]).bit_count() for i, uid in enumerate(planted["reencoded"])]
    assert max(bits) <= 2 and bits.count(0) >= 2, bits
    for i, uid in enumerate(planted["resized"], start=4):
        assert (phash[uid] ^ ref[i]).bit_count() <= 4


def test_default_takes_copies_and_keeps_look_alikes(scored) -> None:
    ws, planted = scored["ws"], scored["planted"]
    report: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoolsieveWarning)  # both sides have hashes: no fallback notice
        kept = set(get_filter("decontaminate")(pool_of(ws), report=report).to_hex())
    members = {s.uid for s in scored["samples"][:-1]}
    assert members - kept == set(planted["reencoded"] + planted["resized"] + planted["exact"])
    assert report["near"] == "phash+embedding" and report["exact_copies"] == 1
    assert report["near_phash_embedding"] == report["near_copies"] == 6
    assert report["near_phash"] == report["near_embedding"] == 0
    assert report["summary"].startswith("1 exact (sha256), 6 near-phash+embedding (<= 8 bits and cosine >= ")
    assert report["reference"] == "references/eval_tasks.npz"
    listed = {m["uid"]: m for m in report["matches"]}
    with np.load(ws.reference_path("eval_tasks")) as z:
        sources = [str(src) for src in z["sources"]]
    assert [int(Path(sources[listed[u]["reference_row"]]).stem) for u in planted["reencoded"]] == [0, 1, 2, 3]
    assert [listed[u]["source"] for u in planted["reencoded"]][:2] == ["squares/000.jpg", "circles/001.jpg"]
    assert all(listed[u]["distance"] <= 2 and listed[u]["by"] == "phash+embedding" for u in planted["reencoded"])
    # phash alone takes the look-alikes too (same layout, other colours): why the default asks both
    alone: dict = {}
    lost = members - set(get_filter("decontaminate")(pool_of(ws), near="phash", report=alone).to_hex())
    assert set(planted["lookalike"]) <= lost and alone["near_phash"] >= 9


def test_tables_scored_before_the_hash_fall_back_with_a_notice(scored, tmp_path) -> None:
    ws = Workspace.create(tmp_path / "old")
    for folder in ("scores", "references"):
        shutil.copytree(scored["ws"].root / folder, ws.root / folder)
    for table in ws.scores_dir.glob("*.parquet"):
        pq.write_table(pq.read_table(table).drop_columns(["phash"]), table)
    report: dict = {}
    with pytest.warns(PoolsieveWarning, match=r"^decontaminate: near copies by embedding only: no perceptual hashes "
                                              r"in 2 of the 2 score tables \(score --overwrite\)"):
        get_filter("decontaminate")(pool_of(ws), report=report)
    assert report["near"] == "embedding" and report["notice"].startswith("decontaminate: near copies by embedding")
    assert report["summary"].startswith("1 exact (sha256), ") and "near-embedding (cosine >= " in report["summary"]
    with pytest.raises(InputError, match="has no phash column"):
        get_filter("decontaminate")(pool_of(ws), near="phash")


def write_report(scored, root: Path, strip_thumbnails: bool = False) -> str:
    ws = Workspace.create(root)
    for folder in ("shards", "scores", "references"):
        shutil.copytree(scored["ws"].root / folder, ws.root / folder)
    if strip_thumbnails:  # a reference made before thumbnails were stored
        path = ws.reference_path("eval_tasks")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if not k.startswith("thumbnail")}
        np.savez(path, **arrays)
    assert main(["filter", "-w", str(ws.root), "--executor", "local", "--spec", "clean = decontaminate"]) == 0
    assert main(["inspect", "-w", str(ws.root), "--executor", "local", "--html"]) == 0
    return str(ws.report_dir / "index.html")


@pytest.mark.browser
@pytest.mark.skipif(chromium_path() is None, reason="no Chromium installed (apt-get install chromium)")
def test_dropped_card_shows_the_evaluation_image_beside_the_pool_image(scored, tmp_path) -> None:
    page_path = write_report(scored, tmp_path / "ws")
    page = Path(page_path).read_text()
    assert page.count('<figure class="card match">') == 7  # every dropped row of the sample: 1 exact, 6 near
    assert "decontaminate: near copy (phash 0 bits, cosine " in page
    with Chromium(width=1280, height=900) as browser:
        browser.open(Path(page_path).as_uri())
        found = browser.evaluate("""(() => [...document.querySelectorAll('figure.card.match')].map(card => ({
            images: [...card.querySelectorAll('.side img')].map(i => [i.naturalWidth, i.getBoundingClientRect().left,
                                                                       i.getBoundingClientRect().width]),
            which: [...card.querySelectorAll('.which')].map(w => w.textContent)})))()""")
        browser.screenshot_of("#subsets", ARTEFACTS / "report-decontaminate-match.png", most=1400)
        errors = browser.errors()
    assert errors == [], errors
    assert len(found) == 7
    for card in found:  # two decoded images side by side: the pool's, then the evaluation image
        (w1, left1, width1), (w2, left2, _) = card["images"]
        assert w1 > 0 and w2 > 0 and left2 >= left1 + width1
        assert card["which"][0] == "pool image" and card["which"][1].startswith("evaluation image: ")


def test_an_old_reference_without_thumbnails_says_so(scored, tmp_path) -> None:
    page = Path(write_report(scored, tmp_path / "ws", strip_thumbnails=True)).read_text()
    assert page.count('<figure class="card match">') == 7
    assert page.count("image not stored in the reference (re-run score --reference)") == 7
