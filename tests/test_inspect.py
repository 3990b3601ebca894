"""inspect and the HTML report summarise what a workspace holds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from poolsieve.core.formats import write_subset
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.inspect.report import write_report
from poolsieve.pipeline.inspect.stage import inspect_workspace


def make_scored_workspace(root):
    ws = Workspace.create(root)
    ws.scores_dir.mkdir()
    rng = np.random.default_rng(0)
    uids = [f"{i:032x}" for i in range(200)]
    scores = rng.uniform(0.1, 0.4, 200)
    status = ["success"] * 190 + ["decode_error"] * 10
    for k in range(2):
        sl = slice(100 * k, 100 * (k + 1))
        pd.DataFrame({"uid": uids[sl], "status": status[sl], "clip_b32_similarity_score": scores[sl]}).to_parquet(
            ws.score_table_path(f"{k:05d}"))
    top = [u for u, s in zip(uids[:190], scores[:190], strict=True) if s > 0.3]
    write_subset(ws.subset_path("top"), uids_to_pairs(top))
    return ws, scores, top


def test_inspect_counts_rows_status_and_subsets(tmp_path):
    ws, scores, top = make_scored_workspace(tmp_path / "ws")
    summary = inspect_workspace(ws)
    assert summary["scores"]["rows"] == 200
    assert summary["scores"]["status"] == {"success": 190, "decode_error": 10}
    q = summary["scores"]["score_columns"]["clip_b32_similarity_score"]
    assert q["p50"] == round(float(np.median(scores)), 4)
    assert summary["subsets"]["top"]["uids"] == len(top)


def test_html_report_has_plots_for_scores_and_subsets(tmp_path):
    import json

    ws, _, top = make_scored_workspace(tmp_path / "ws")
    page = write_report(ws, inspect_workspace(ws)).read_text()
    assert page.count('<svg class="chart"') == 1  # the score histogram (pool + subset); one column, no scatter
    assert "clip_b32_similarity_score" in page and ">top<" in page
    assert f"{len(top):,}" in page  # the funnel's subset row
    # kept and dropped examples of the subset (no shards here: cards without images), reasons given
    assert page.count('class="card"') == 24 and "outside top" in page
    # the JSON summary is a file beside the page, linked; no absolute path in either
    assert 'href="summary.json"' in page and "<pre>" not in page and str(ws.root) not in page
    summary = json.loads((ws.report_dir / "summary.json").read_text())
    assert summary["subsets"]["top"]["uids"] == len(top) and summary["workspace"] == "ws"


def test_report_is_the_same_on_every_render(tmp_path):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    first = write_report(ws, inspect_workspace(ws)).read_bytes()
    assert write_report(ws, inspect_workspace(ws)).read_bytes() == first  # seeded samples


def test_sampling_bounds_the_rows_read(tmp_path):
    from poolsieve.pipeline.inspect.report_data import sample_pool

    ws, _, top = make_scored_workspace(tmp_path / "ws")
    sample = sample_pool(ws, ["top"], pool_rows=190, max_rows=50)
    assert len(sample.frame) == 50 and sample.tables_read == 1 and not sample.is_whole_pool
    assert set(sample.frame["status"]) == {"success"}
    inside = set(sample.frame["uid"][sample.members["top"]])
    assert inside == set(sample.frame["uid"]) & set(top)


def test_cli_json_and_html_are_options_of_the_stage(tmp_path, capsys):
    import json

    from poolsieve.pipeline.cli import main

    ws, _, top = make_scored_workspace(tmp_path / "ws")
    assert main(["inspect", "-w", str(ws.root), "--executor", "local", "--json", "--html"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[:out.rindex("}") + 1])
    assert printed["subsets"]["top"]["uids"] == len(top) and "show" not in printed
    assert (ws.root / "report" / "index.html").exists() and out.strip().endswith("index.html")


def test_chart_ticks_are_round_and_cover_the_range():
    from poolsieve.pipeline.inspect.charts import nice_ticks, tick_label

    ticks = nice_ticks(0.113, 0.392, 6)
    assert ticks[0] <= 0.113 and ticks[-1] >= 0.392 and len(ticks) >= 4
    step = ticks[1] - ticks[0]
    assert [tick_label(t, step) for t in ticks[:3]] == ["0.10", "0.15", "0.20"]
    assert tick_label(12000, 2000) == "12k" and tick_label(2.5, 2.5) == "2.5"


def test_histogram_range_bins_and_close_up_follow_the_data():
    from poolsieve.pipeline.inspect.report_data import bin_count, dense_window, score_range

    rng = np.random.default_rng(0)
    peak = np.concatenate([rng.normal(0.9, 0.02, 7000), rng.uniform(-0.9, 0.6, 3000)])  # a scorer's shape
    lo, hi = score_range(peak, [0.95])
    assert lo < -0.85 and 0.95 < hi < 1.1
    d_lo, d_hi = dense_window(peak, 0.5)
    assert 0.85 < d_lo < d_hi < 0.95 and (d_hi - d_lo) < 0.12 * (hi - lo)  # the close-up is drawn
    normal = rng.normal(0.3, 0.05, 10000)
    n_lo, n_hi = score_range(normal, [])
    w_lo, w_hi = dense_window(normal, 0.5)
    assert (w_hi - w_lo) > 0.12 * (n_hi - n_lo)  # no close-up for a plain bell curve
    assert 30 <= bin_count(normal, n_lo, n_hi) <= 100 and bin_count(peak[:7000], 0.8, 1.0) > 30


def test_a_label_read_from_two_sources_is_shown_once() -> None:
    """The built-in pool carries its defect in the metadata and in labels.parquet: one label on the card."""
    from poolsieve.pipeline.inspect.report_data import label_text

    row = {"poolsieve_defect": "near_duplicate", "defect": "near_duplicate", "other": "x"}
    assert label_text(row, ["poolsieve_defect", "defect"]) == "near_duplicate"
    assert label_text({"poolsieve_defect": "none", "defect": "none"}, ["poolsieve_defect", "defect"]) == ""


def test_label_table_reports_removal_recall_and_precision() -> None:
    """8 pairs, 4 defective: a subset that removes 3 defects and 1 clean pair has recall 75%, precision 75%."""
    from poolsieve.pipeline.inspect.report import _label_table
    from poolsieve.pipeline.inspect.report_data import PoolSample

    labels = ["none", "none", "none", "none", "mismatch", "mismatch", "too_small", "too_small"]
    kept = np.array([True, True, True, False, False, False, False, True])
    sample = PoolSample(pd.DataFrame({"poolsieve_defect": labels}), [], ["poolsieve_defect"], {"clip30": kept})
    page = _label_table(sample)
    assert "defects removed (recall)</th><td class=\"num\">4</td><td class=\"num\">75%" in page
    assert "removed that were defects (precision)</th><td class=\"num\">4</td><td class=\"num\">75%" in page
    assert "<td>mismatch</td><td class=\"num\">2</td><td class=\"num\">0%" in page  # both mismatches removed
    unlabelled = PoolSample(pd.DataFrame({"poolsieve_defect": ["a", "b"]}), [], ["poolsieve_defect"],
                            {"s": np.array([True, False])})
    assert "recall" not in _label_table(unlabelled)  # no value names the clean pairs: no removal figures
