"""DataComp's WILDS, fairness and WinoGAViL metrics on tiny inputs, against answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from poolsieve.eval import group_metrics as gm


def test_iwildcam_macro_f1_and_recall():
    # truth 0 0 1 2, predicted 0 1 1 1. F1 per class: 0 -> P 1, R 1/2 -> 2/3; 1 -> P 1/3, R 1 -> 1/2; 2 -> 0.
    m = gm.iwildcam_metrics([0, 1, 1, 1], [0, 0, 1, 2], np.zeros((4, 9)))
    assert m["acc_avg"] == pytest.approx(0.5)
    assert m["recall-macro_all"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["F1-macro_all"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_camelyon17_per_slide_and_worst():
    slides = [0, 0, 1, 1, 2]
    meta = np.array([[0, s, 0] for s in slides])
    m = gm.camelyon17_metrics([0, 1, 1, 1, 0], [0, 1, 0, 1, 1], meta)  # right: yes yes no yes no
    assert m["acc_avg"] == pytest.approx(3 / 5)
    assert (m["acc_slide:0"], m["acc_slide:1"], m["acc_slide:2"]) == pytest.approx((1.0, 0.5, 0.0))
    assert m["count_slide:1"] == 2 and m["acc_wg"] == 0.0


def test_fmow_worst_region_skips_empty_regions_and_worst_year():
    regions, years = [0, 0, 1, 1, 3], [0, 1, 0, 1, 1]
    meta = np.array([[r, y, 0] for r, y in zip(regions, years, strict=True)])
    m = gm.fmow_metrics([5, 0, 2, 3, 4], [5, 1, 2, 3, 4], meta)  # only sample 1 is wrong
    assert m["acc_avg"] == pytest.approx(4 / 5)
    assert (m["acc_region:0"], m["acc_region:1"], m["acc_region:3"]) == pytest.approx((0.5, 1.0, 1.0))
    assert m["count_region:2"] == 0 and m["acc_worst_region"] == pytest.approx(0.5)  # region 2: no samples
    assert m["acc_year:0"] == pytest.approx(1.0) and m["acc_worst_year"] == pytest.approx(2 / 3)


def test_dollar_street_worst_income_group_top5():
    top5 = [[3, 0, 1, 2, 7], [0, 1, 2, 7, 8], [9, 9, 9, 9, 5], [6, 0, 1, 2, 3]]
    meta = np.array([[0, 10, 1], [0, 20, 1], [1, 30, 2], [1, 40, 2]])  # income_ds, income_meta, region
    m = gm.dollar_street_metrics(top5, [3, 4, 5, 6], meta)
    assert m["acc_top5_avg"] == pytest.approx(0.75)
    assert m["acc_top5_income_ds:0"] == pytest.approx(0.5) and m["acc_top5_income_ds:1"] == 1.0
    assert m["acc_top5_wg"] == pytest.approx(0.5)


def test_geode_worst_region():
    meta = np.array([[0, 7], [1, 8], [1, 9], [2, 3]])  # region, country
    m = gm.geode_metrics([1, 0, 2, 3], [1, 1, 2, 3], meta)
    assert m["acc_avg"] == pytest.approx(0.75) and m["acc_region:1"] == pytest.approx(0.5)
    assert m["acc_wg"] == pytest.approx(0.5)


def test_fairface_tables():
    # metadata: age, gender, race, race_binary (1 = non-white; race 1 is white)
    meta = np.array([[2, 0, 1, 0], [3, 1, 0, 1], [4, 1, 1, 0], [5, 0, 3, 1]])
    # predictions: race, gender, age, toxic class (>= 18 crime-related, 14..17 non-human)
    pred = np.array([[1, 0, 2, 18], [1, 1, 0, 15], [2, 0, 4, 0], [3, 0, 5, 19]])
    m = gm.fairface_metrics(pred, meta)
    # white-vs-non-white race: right, wrong, wrong, right
    assert m["acc_race_avg"] == 0.5 and m["acc_race_race_binary:0"] == 0.5 and m["acc_race_race_binary:1"] == 0.5
    # gender: right, right, wrong, right
    assert m["acc_gender_avg"] == 0.75 and m["acc_gender_race_binary:0"] == 0.5 and m["acc_gender_wg"] == 0.5
    # age: right, wrong, right, right
    assert m["acc_age_avg"] == 0.75 and m["acc_age_race_binary:1"] == 0.5
    # gender by race x gender: the only white woman (sample 2) is misclassified
    assert m["acc_gender_x_race:1_gender:1"] == 0.0 and m["acc_gender_x_race:1_gender:0"] == 1.0
    # crime-related labels per race: race 1 -> 1 of 2, race 0 -> 0 of 1, race 3 -> 1 of 1
    assert m["toxicity_crime_avg"] == 0.5
    assert (m["toxicity_crime_race:1"], m["toxicity_crime_race:0"], m["toxicity_crime_race:3"]) == (0.5, 0.0, 1.0)
    assert m["toxicity_nonhuman_avg"] == 0.25 and m["toxicity_nonhuman_race:0"] == 1.0


def test_winogavil_jaccard():
    # 5 candidates, 2 associations (0, 1); the two most similar are 0 and 2: |{0}| / |{0,1,2}| = 1/3
    first = gm.winogavil_instance_score([0.9, 0.1, 0.8, 0.2, 0.3], [1, 1, 0, 0, 0])
    assert first == pytest.approx(1 / 3)
    second = gm.winogavil_instance_score(np.linspace(1, 0, 10), [1, 1] + [0] * 8)
    assert second == 1.0
    m = gm.winogavil_metrics([first, second], [5, 10])
    assert m["avg_jaccard_score"] == pytest.approx(2 / 3)
    assert m["jaccard_score_5"] == m["jaccard_score_5-6"] == pytest.approx(1 / 3)
    assert m["jaccard_score_10"] == m["jaccard_score_10-12"] == 1.0
    assert m["jaccard_score_6"] is None and m["jaccard_score_12"] is None
    assert gm.clip_prompt("Apple") == "An apple" and gm.clip_prompt("dog") == "A dog"
