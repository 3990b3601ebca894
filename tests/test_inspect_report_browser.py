"""The HTML report opened in a real browser (headless Debian Chromium over the DevTools protocol).

A small workspace with every stage's outputs (shards with failed downloads, two score columns, labels,
subsets made by the filter stage, a reshard, training runs with losses, a full 38-task evaluation) is
rendered by ``poolsieve inspect --html``; the page is loaded from a copy of the report folder and
checked: every image decodes, every plot has axis titles and tick labels, no legend covers its plot
area, no chart text falls outside its chart, the JSON summary is a linked file, the console is clean.
Full-page screenshots go to ``$POOLSIEVE_TEST_ARTIFACTS`` (default: ``test-artifacts/`` in the checkout,
which outlives pytest's tmp folders).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import PAGE_CHECKS, Chromium, chromium_path
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.formats import score_table_schema
from poolsieve.core.workspace import Workspace
from poolsieve.eval.aggregate import RESULTS_FILE, result_line, write_results
from poolsieve.eval.tasks import SCORED_TASKS

DEFECTS = ("none", "mismatched_caption", "too_small", "non_english")


def build_workspace(root: Path) -> Workspace:
    """Every stage's outputs on 120 coloured-shape pairs, quickly: scores and training logs are written
    directly; subsets and the reshard come from the stages themselves."""
    from poolsieve.pipeline.cli import main

    ws = Workspace.create(root)
    rng = np.random.default_rng(7)
    samples = make_samples(120, seed=5, image_size=48, fail_every=12)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=60)
    defects = rng.choice(DEFECTS, len(samples), p=[0.6, 0.2, 0.1, 0.1])
    ws.metadata_dir.mkdir()
    pd.DataFrame({"uid": [s.uid for s in samples], "url": [f"http://127.0.0.1:1/{s.uid}.jpg" for s in samples],
                  "text": [s.caption for s in samples], "original_width": 256, "original_height": 256}
                 ).to_parquet(ws.metadata_dir / "00000.parquet")
    (ws.root / "synthetic").mkdir()
    pd.DataFrame({"uid": [s.uid for s in samples], "defect": defects,
                  "shape": [s.shape for s in samples]}).to_parquet(ws.root / "synthetic" / "labels.parquet")
    ws.scores_dir.mkdir()
    for shard in range(2):
        rows = []
        for i, s in enumerate(samples[60 * shard:60 * (shard + 1)]):
            d = defects[60 * shard + i]
            side = 64 if d == "too_small" else 256
            b32 = rng.normal(0.18 if d == "mismatched_caption" else 0.3, 0.03)
            rows.append({"uid": s.uid, "key": f"{shard:05d}{i:04d}", "text": s.caption, "original_width": side,
                         "original_height": side, "width": 48, "height": 48, "caption_length": len(s.caption),
                         "caption_words": len(s.caption.split()), "sha256": None, "language_score": 0.9, "language": "de" if d == "non_english" else "en",
                         "status": "success" if s.jpeg else "decode_error", "error": None if s.jpeg else "no image",
                         "clip_b32_similarity_score": b32, "clip_l14_similarity_score": b32 * 0.8 + rng.normal(0, 0.02)})
        table = pd.DataFrame(rows)
        pq.write_table(pa.Table.from_pandas(table, schema=score_table_schema(["b32", "l14"]), preserve_index=False),
                       ws.score_table_path(f"{shard:05d}"))
    common = ["-w", str(ws.root), "--executor", "local"]
    spec = ws.root / "subsets.yaml"
    spec.write_text("basic: basic\nclip30: {clip_score: {fraction: 0.3}}\n"
                    "basic_clip: basic & clip_score(column=clip_l14_similarity_score, threshold=0.2)\n")
    assert main(["filter", *common, "--spec", str(spec)]) == 0
    assert main(["reshard", *common, "--subset", "basic", "--shard-size", "20"]) == 0
    for k, name in enumerate(("basic", "clip30")):
        run = ws.run_dir(name)
        run.mkdir(parents=True)
        size = json.loads(ws.subset_info_path(name).read_text())["count"]
        seen = np.arange(64, 2049, 64)
        losses = [{"samples_seen": int(x), "loss": float(4.2 * np.exp(-x / (700 + 300 * k)) + 0.6)} for x in seen]
        (run / "summary.json").write_text(json.dumps({
            "name": name, "data": [f"../../filtered/{name}"], "scale": "tiny", "samples_seen": 2048,
            "dataset_size": size, "passes_over_data": 2048 / size, "losses": losses,
            "final_loss": losses[-1]["loss"], "seconds": 12.5, "samples_per_second": 163.8}))
        lines = [result_line(t, {"main_metric": float(rng.uniform(0.05, 0.6))}, 0.1) for t in SCORED_TASKS]
        ws.eval_dir(name).mkdir(parents=True)
        write_results(ws.eval_dir(name) / RESULTS_FILE, lines)
    assert main(["inspect", *common, "--html"]) == 0
    return ws


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_report_says_why_each_dropped_pair_went(tmp_path):
    """The page itself, without a browser: each dropped card's reason is its row's failing test (basic) or
    its score under the recorded threshold (clip_score)."""
    ws = build_workspace(tmp_path / "ws")
    page = html.unescape((ws.report_dir / "index.html").read_text())
    cards = re.findall(r'<div class="score">b32 score ([0-9.]+) · l14 score ([0-9.]+)</div>'
                       r'(?:<div class="label">label: (\w+)</div>)?<div class="reason">(.*?)</div>', page)
    assert len(cards) >= 30
    for b32, l14, label, reason in cards:
        if reason.startswith(("b32 score", "l14 score")):
            key, shown, cut = re.fullmatch(r"(b32|l14) score ([0-9.]+) < ([0-9.]+)", reason).groups()
            assert float(shown) == float(b32 if key == "b32" else l14) < float(cut), reason
        elif reason.startswith("basic: "):
            assert (label, reason) in {("too_small", "basic: image 64 px < 200"),
                                       ("non_english", "basic: language de ≠ en")}, (label, reason)
        else:
            assert reason == "not in basic", reason
    assert {r.split(":")[0].split(" ")[0] for *_, r in cards} == {"b32", "l14", "basic", "not"}


@pytest.mark.browser
@pytest.mark.skipif(chromium_path() is None, reason="no Chromium installed (apt-get install chromium)")
def test_report_in_headless_chromium(tmp_path):
    ws = build_workspace(tmp_path / "ws")
    # the report folder alone, copied elsewhere, must still work (everything inline, links relative)
    copied = shutil.copytree(ws.report_dir, tmp_path / "copied-report")
    page = (copied / "index.html").read_text()
    assert str(ws.root) not in page and str(tmp_path) not in page
    assert str(ws.root) not in (copied / "summary.json").read_text()
    artefacts = Path(os.environ.get("POOLSIEVE_TEST_ARTIFACTS") or Path(__file__).parents[1] / "test-artifacts")

    with Chromium(width=1280, height=900) as browser:
        browser.open((copied / "index.html").as_uri())
        found = browser.evaluate(PAGE_CHECKS)
        browser.screenshot(artefacts / "report-full.png")
        errors = browser.errors()

    assert errors == [], errors
    assert {"Funnel", "Scores", "Training", "Evaluation"} <= set(found["sections"]), found["sections"]
    assert any(s.startswith("Subsets") for s in found["sections"])
    images = found["images"]
    assert len(images) >= 24 and all(i["ok"] for i in images), [i for i in images if not i["ok"]][:3]
    charts = found["charts"]
    titles = [c["title"] for c in charts]
    # two score histograms, a scatter of the two scores, the loss curves
    assert sum("distribution" in t for t in titles) == 2 and any("against" in t for t in titles), titles
    assert any("loss" in t for t in titles), titles
    for c in charts:
        assert c["xTitle"] and c["yTitle"], c["title"]
        assert len(c["xTicks"]) >= 3 and len(c["yTicks"]) >= 3 and all(c["xTicks"] + c["yTicks"]), c["title"]
        assert c["legend"] is not None and not overlaps(c["legend"], c["area"]), c["title"]
        svg = c["svg"]
        clipped = [t[0] for t in c["textBoxes"] if t[1] < svg[0] - 0.5 or t[3] > svg[2] + 0.5
                   or t[2] < svg[1] - 0.5 or t[4] > svg[3] + 0.5]
        assert not clipped, (c["title"], clipped)
    # the threshold each clip_score subset recorded is drawn on its column's histogram
    assert "clip30 ≥" in page and "basic_clip ≥ 0.200" in page
    # dropped pairs say why (basic's failing test, the clip cut) and carry the pool's defect label
    assert "basic: image 64 px &lt; 200" in page and "basic: language de ≠ en" in page
    assert "b32 score 0." in page and "&lt; 0.3" in page and "label: too_small" in page
    link = Path(found["summaryHref"].removeprefix("file://"))
    assert found["summaryLink"] == "summary.json" and link.is_file()
    assert json.loads(link.read_text())["subsets"]["basic"]["uids"] > 0
    assert "<pre>" not in page  # the summary is a file, not the page's body
    assert (artefacts / "report-full.png").stat().st_size > 10_000
