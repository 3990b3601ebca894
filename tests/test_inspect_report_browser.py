"""The HTML report opened in a real browser (headless Debian Chromium over the DevTools protocol).

A small workspace with every stage's outputs (shards with failed downloads, two score columns, labels,
ten subsets made by the filter stage, a reshard, training runs with losses, a full 38-task evaluation
plus a user's own 11-class task and a synthetic one) is rendered by ``poolsieve inspect --html``; the
page is loaded from a copy of the report folder and checked: every image decodes, every plot has axis
titles and tick labels, no legend covers its plot area, no chart text falls outside its chart, the
histograms of ten subsets are small multiples that stay in the page's column, the user's task shows
chance, test images and intervals (each interval bar inside its cell), the JSON summary is a linked
file, the console is clean. A second render with ``--labels FILE`` shows the user's categories. The
reasons given for dropped pairs are checked on the page's HTML alone, without a browser (fast tier).
Screenshots (the full page, the Scores, Evaluation and labelled Subsets sections) go to
``$POOLSIEVE_TEST_ARTIFACTS`` (default: ``test-artifacts/`` in the checkout, which outlives pytest's tmp
folders).
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
from poolsieve.eval.aggregate import (
    OTHER_RESULTS_FILE,
    RESULTS_FILE,
    result_line,
    wilson_interval,
    write_results,
)
from poolsieve.eval.tasks import CLASSIFICATION, SCORED_TASKS, TASKS, Task

DEFECTS = ("none", "mismatched_caption", "too_small", "non_english")
MORE_FRACTIONS = (10, 20, 40, 50, 60, 70, 80)  # ten subsets in all: the histograms become small multiples
CLIPART = Task("custom/clipart", "clipart", CLASSIFICATION, "acc1", 0)


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
                         "phash": None, "clip_b32_similarity_score": b32, "clip_l14_similarity_score": b32 * 0.8 + rng.normal(0, 0.02)})
        table = pd.DataFrame(rows)
        pq.write_table(pa.Table.from_pandas(table, schema=score_table_schema(["b32", "l14"]), preserve_index=False),
                       ws.score_table_path(f"{shard:05d}"))
    common = ["-w", str(ws.root), "--executor", "local"]
    spec = ws.root / "subsets.yaml"
    spec.write_text("basic: basic\nclip30: {clip_score: {fraction: 0.3}}\n"
                    "basic_clip: basic & clip_score(column=clip_l14_similarity_score, threshold=0.2)\n"
                    + "".join(f"clip{p}: {{clip_score: {{fraction: 0.{p}}}}}\n" for p in MORE_FRACTIONS))
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
        # the user's own 11-class task (issue 26): 64 and 77 of 177 images right, and a synthetic task apart
        own, shape = (64 + 13 * k) / 177, 0.40 + 0.25 * k
        write_results(ws.eval_dir(name) / OTHER_RESULTS_FILE, [
            result_line(CLIPART, {"acc1": own, "main_metric": own, "num_samples": 177, "num_classes": 11}, 1.0),
            result_line(TASKS["synthetic_shape"], {"acc1": shape, "main_metric": shape, "num_samples": 600,
                                                   "num_classes": 3}, 1.0)])
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
            # the reason's digits tell the score and the cut apart; the card shows the score to 3 decimals
            assert float(shown) < float(cut) and len(shown) == len(cut) >= 5, reason
            assert abs(float(shown) - float(b32 if key == "b32" else l14)) <= 0.0005 + 1e-12, reason
        elif reason.startswith("basic: "):
            assert (label, reason) in {("too_small", "basic: image 64 px < 200"),
                                       ("non_english", "basic: language de ≠ en")}, (label, reason)
        else:
            assert reason == "not in basic", reason
    assert {r.split(":")[0].split(" ")[0] for *_, r in cards} == {"b32", "l14", "basic", "not"}


ARTEFACTS = Path(os.environ.get("POOLSIEVE_TEST_ARTIFACTS") or Path(__file__).parents[1] / "test-artifacts")


def check_charts(found: dict) -> None:
    """Every chart has axis titles, round ticks and no text outside it; a whole chart's legend stays off
    its plot area, and small multiples share one legend per figure."""
    for c in found["charts"]:
        assert c["xTitle"] and c["yTitle"], c["title"]
        assert len(c["xTicks"]) >= 3 and len(c["yTicks"]) >= 3 and all(c["xTicks"] + c["yTicks"]), c["title"]
        if not c["panel"]:
            assert c["legend"] is not None and not overlaps(c["legend"], c["area"]), c["title"]
        svg = c["svg"]
        clipped = [t[0] for t in c["textBoxes"] if t[1] < svg[0] - 0.5 or t[3] > svg[2] + 0.5
                   or t[2] < svg[1] - 0.5 or t[4] > svg[3] + 0.5]
        assert not clipped, (c["title"], clipped)
    for figure in found["multiples"]:
        assert figure["legend"] and figure["panels"], figure["title"]
        inside = [p for p in figure["panels"] if p[0] >= figure["figure"][0] - 0.5 and p[2] <= figure["figure"][2] + 0.5]
        assert len(inside) == len(figure["panels"]), figure["title"]  # no panel runs off the page's column
        assert not any(overlaps(a, b) for i, a in enumerate(figure["panels"]) for b in figure["panels"][i + 1:])


@pytest.mark.browser
@pytest.mark.skipif(chromium_path() is None, reason="no Chromium installed (apt-get install chromium)")
def test_report_in_headless_chromium(tmp_path):
    ws = build_workspace(tmp_path / "ws")
    # the report folder alone, copied elsewhere, must still work (everything inline, links relative)
    copied = shutil.copytree(ws.report_dir, tmp_path / "copied-report")
    page = (copied / "index.html").read_text()
    assert str(ws.root) not in page and str(tmp_path) not in page
    assert str(ws.root) not in (copied / "summary.json").read_text()

    with Chromium(width=1280, height=900) as browser:
        browser.open((copied / "index.html").as_uri())
        found = browser.evaluate(PAGE_CHECKS)
        browser.screenshot(ARTEFACTS / "report-full.png")
        browser.screenshot_of("#scores", ARTEFACTS / "report-scores.png")
        browser.screenshot_of("#evaluation", ARTEFACTS / "report-evaluation.png")
        errors = browser.errors()

    assert errors == [], errors
    assert {"Funnel", "Scores", "Training", "Evaluation"} <= set(found["sections"]), found["sections"]
    assert any(s.startswith("Subsets") for s in found["sections"])
    images = found["images"]
    assert len(images) >= 24 and all(i["ok"] for i in images), [i for i in images if not i["ok"]][:3]
    titles = [c["title"] for c in found["charts"]]
    # ten subsets: each score column's histogram is a figure of ten small multiples (issue 26, item 4)
    figures = found["multiples"]
    assert sum("distribution" in f["title"] for f in figures) == 2 and all(len(f["panels"]) == 10 for f in figures)
    assert any("against" in t for t in titles) and any("loss" in t for t in titles), titles
    check_charts(found)
    # the threshold each clip_score subset recorded is drawn on its column's panel
    assert 'aria-label="clip30: keeps' in page and 'aria-label="basic_clip: keeps' in page
    # dropped pairs say why (basic's failing test, the clip cut) and carry the pool's defect label
    assert "basic: image 64 px &lt; 200" in page and "basic: language de ≠ en" in page
    assert "b32 score 0." in page and "&lt; 0.3" in page and "label: too_small" in page
    link = Path(found["summaryHref"].removeprefix("file://"))
    assert found["summaryLink"] == "summary.json" and link.is_file()
    assert json.loads(link.read_text())["subsets"]["basic"]["uids"] > 0
    assert "<pre>" not in page  # the summary is a file, not the page's body
    assert (ARTEFACTS / "report-full.png").stat().st_size > 10_000
    # the user's own task is a row of its own with chance, test images and intervals (issue 26, item 3)
    evaluation = page[page.index('id="evaluation"'):]
    row = evaluation[evaluation.index("<td>clipart</td>"):]
    row = row[:row.index("</tr>")]
    assert "<td>your task</td><td class=\"num\">11</td><td class=\"num\">0.091</td><td class=\"num\">177</td>" in row
    for right in (64, 77):
        lo, hi = wilson_interval(right / 177, 177)
        assert f"{right / 177:.3f}" in row and f"{lo:.3f}–{hi:.3f}" in row
    assert "best" not in row  # 13 images apart: the intervals overlap
    shape = evaluation[evaluation.index("<td>Synthetic shape</td>"):]
    assert shape[:shape.index("</tr>")].count("best-mark") == 1  # 0.40 and 0.65 of 600: apart
    assert len(found["bars"]) >= 4
    for bar in found["bars"]:  # every interval bar sits inside its cell, its parts inside the bar
        assert bar["cell"][0] - 0.5 <= bar["bar"][0] and bar["bar"][2] <= bar["cell"][2] + 0.5, bar
        assert all(bar["bar"][0] - 1.5 <= p[0] and p[2] <= bar["bar"][2] + 1.5 for p in bar["parts"]), bar


@pytest.mark.browser
@pytest.mark.skipif(chromium_path() is None, reason="no Chromium installed (apt-get install chromium)")
def test_user_labels_in_headless_chromium(tmp_path):
    """``inspect --labels FILE`` (issue 26, item 5): the user's categories on the cards and in the table."""
    from poolsieve.pipeline.cli import main

    ws = build_workspace(tmp_path / "ws")
    uids = pq.read_table(ws.metadata_dir / "00000.parquet", columns=["uid"])["uid"].to_pylist()
    labels = tmp_path / "clipart labels.csv"
    pd.DataFrame({"uid": uids[:100], "category": [("animal", "vehicle", "plant", "logo")[i % 4] for i in range(100)]}
                 ).to_csv(labels, index=False)
    assert main(["inspect", "-w", str(ws.root), "--executor", "local", "--html", "--labels", str(labels)]) == 0
    page = (ws.report_dir / "index.html").read_text()
    with Chromium(width=1280, height=900) as browser:
        browser.open((ws.report_dir / "index.html").as_uri())
        found = browser.evaluate(PAGE_CHECKS)
        browser.screenshot_of("#subsets", ARTEFACTS / "report-subsets-labels.png", most=1400)
        errors = browser.errors()
    assert errors == [], errors
    check_charts(found)
    assert "Labels from your file clipart labels.csv (column(s) category; 100 rows)" in page
    assert "<th>category</th>" in page and "<td>(no label)</td>" in page
    assert "label: animal" in page and "label: too_small" not in page  # the user's labels are the ones shown
    scatter = next(c for c in found["charts"] if "against" in c["title"])
    assert {"animal", "vehicle", "plant", "logo"} <= {t[0].split(" (")[0] for t in scatter["textBoxes"]}
