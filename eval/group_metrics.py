"""DataComp's metrics for the WILDS, fairness and WinoGAViL tasks, on the ``wilds`` library's metrics.

Each function takes predictions, labels and the per-sample metadata vector (the ``.npy`` of each
webdataset sample) and returns the metrics DataComp's ``eval_utils`` reports, under its names:

- iWildCam (metadata: location, sequence, year, month, day, hour, minute, second, y): ``acc_avg``,
  ``recall-macro_all`` and ``F1-macro_all`` (macro over the classes present in the labels; main metric).
- Camelyon17 (hospital, slide, y): ``acc_avg``, per slide ``acc_slide:K``/``count_slide:K``, ``acc_wg``.
- FMoW (region, year, y): ``acc_avg``, per year, ``acc_worst_year``, per region, and ``acc_worst_region``,
  the lowest accuracy over regions that have samples (main metric).
- Dollar Street (income_ds, income_meta, region): top-5 accuracy per income group, ``acc_top5_wg``
  (the worst; main metric).
- GeoDE (region, country): accuracy per region, ``acc_wg`` (the worst; main metric).
- FairFace / UTKFace (age, gender, race, race_binary; predictions for race, gender, age, toxic):
  accuracies per white / non-white group, gender accuracy per race x gender, and the rates of
  crime-related (class >= 18) and non-human (14..17) labels per race. Reported, not averaged.
- WinoGAViL: per instance, the Jaccard index between the true associations and the top-k candidates by
  similarity to the cue (k = number of associations); means over all and by candidate count 5, 6, 10,
  12, 5-6 and 10-12 (``jaccard_score_10-12``, main metric).

wilds' group-wise averaging needs torch_scatter; the metrics here average each group directly
(``Metric._compute_group_wise``), which gives the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IWILDCAM_FIELDS = ["location", "sequence", "year", "month", "day", "hour", "minute", "second", "y"]
CAMELYON_FIELDS = ["hospital", "slide", "y"]
FMOW_FIELDS = ["region", "year", "y"]
DOLLAR_STREET_FIELDS = ["income_ds", "income_meta", "region"]
GEODE_FIELDS = ["region", "country"]
FAIRFACE_FIELDS = ["age", "gender", "race", "race_binary"]
FAIRFACE_OBJECTIVES = ["race", "gender", "age", "toxic"]


def _wilds() -> Any:
    from wilds.common.grouper import CombinatorialGrouper
    from wilds.common.metrics.all_metrics import F1, Accuracy, Recall
    from wilds.common.metrics.metric import Metric
    from wilds.datasets.wilds_dataset import WILDSDataset

    class GroupAccuracy(Accuracy):
        """wilds' Accuracy, averaged per group without torch_scatter."""

        def _compute_group_wise(self, y_pred, y_true, g, n_groups):
            return Metric._compute_group_wise(self, y_pred, y_true, g, n_groups)

    class TopKAccuracy(GroupAccuracy):
        """A hit when the label is among a row of top-k predictions."""

        def _compute_element_wise(self, y_pred, y_true):
            return (y_pred == y_true.unsqueeze(-1)).any(-1).float()

    class Metadata(WILDSDataset):
        """Just enough of a WILDS dataset for wilds' groupers: fields and the metadata array."""

        def __init__(self, metadata, fields):
            self._metadata_array = metadata
            self._metadata_fields = fields

    return CombinatorialGrouper, F1, Recall, GroupAccuracy, TopKAccuracy, Metadata, WILDSDataset


def _tensor(x: Any, dtype: Any = None) -> Any:
    import torch

    t = torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def _plain(results: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if not isinstance(v, str) else v) for k, v in results.items()}


def _group_eval(metric: Any, fields: list[str], by: list[str], y_pred: Any, y_true: Any, metadata: Any) -> dict:
    grouper_cls, *_rest, metadata_cls, wilds_dataset = _wilds()
    grouper = grouper_cls(dataset=metadata_cls(metadata, fields), groupby_fields=by)
    return wilds_dataset.standard_group_eval(metric, grouper, y_pred, y_true, metadata)[0]


def iwildcam_metrics(y_pred: Any, y_true: Any, metadata: Any) -> dict[str, float]:
    _g, f1, recall, accuracy, *_ = _wilds()
    y_pred, y_true = _tensor(y_pred).long(), _tensor(y_true).long()
    out: dict[str, Any] = {}
    for metric in (accuracy(), recall(average="macro"), f1(average="macro")):
        out.update(metric.compute(y_pred, y_true))
    return _plain(out)


def camelyon17_metrics(y_pred: Any, y_true: Any, metadata: Any) -> dict[str, float]:
    accuracy = _wilds()[3]
    return _plain(_group_eval(accuracy(), CAMELYON_FIELDS, ["slide"], _tensor(y_pred).long(),
                              _tensor(y_true).long(), _tensor(metadata).long()))


def fmow_metrics(y_pred: Any, y_true: Any, metadata: Any) -> dict[str, float]:
    grouper_cls, _f1, _r, accuracy, _topk, metadata_cls, _wd = _wilds()
    y_pred, y_true, metadata = _tensor(y_pred).long(), _tensor(y_true).long(), _tensor(metadata).long()
    metric = accuracy()
    out = _group_eval(metric, FMOW_FIELDS, ["year"], y_pred, y_true, metadata)
    out[f"{metric.name}_worst_year"] = out.pop(metric.worst_group_metric_field)
    regions = grouper_cls(dataset=metadata_cls(metadata, FMOW_FIELDS), groupby_fields=["region"])
    per_region = metric.compute_group_wise(y_pred, y_true, regions.metadata_to_group(metadata), regions.n_groups)
    present = []
    for g in range(regions.n_groups):
        label = regions.group_field_str(g)
        out[f"{metric.name}_{label}"] = per_region[metric.group_metric_field(g)]
        out[f"count_{label}"] = per_region[metric.group_count_field(g)]
        if per_region[metric.group_count_field(g)] > 0:
            present.append(per_region[metric.group_metric_field(g)])
    out[f"{metric.name}_worst_region"] = float(min(present))
    return _plain(out)


def dollar_street_metrics(top5: Any, y_true: Any, metadata: Any) -> dict[str, float]:
    """``top5``: the 5 best classes per sample (n x 5)."""
    topk = _wilds()[4]
    return _plain(_group_eval(topk(name="acc_top5"), DOLLAR_STREET_FIELDS, ["income_ds"], _tensor(top5).long(),
                              _tensor(y_true).long(), _tensor(metadata).long()))


def geode_metrics(y_pred: Any, y_true: Any, metadata: Any) -> dict[str, float]:
    accuracy = _wilds()[3]
    return _plain(_group_eval(accuracy(), GEODE_FIELDS, ["region"], _tensor(y_pred).long(),
                              _tensor(y_true).long(), _tensor(metadata).long()))


def fairface_metrics(y_pred: Any, metadata: Any) -> dict[str, float]:
    """``y_pred``: n x 4 predicted class per objective (race, gender, age, toxic); ``metadata``: n x 4
    (age, gender, race, race_binary)."""
    import torch

    accuracy = _wilds()[3]
    y_pred, metadata = _tensor(y_pred).long(), _tensor(metadata).long()

    def col(name: str) -> Any:
        return metadata[:, FAIRFACE_FIELDS.index(name)]

    def pred(name: str) -> Any:
        return y_pred[:, FAIRFACE_OBJECTIVES.index(name)]

    out: dict[str, Any] = {}
    # race as white (label 1) vs non-white, compared with race_binary; gender and age; by race_binary
    out.update(_group_eval(accuracy(name="acc_race"), FAIRFACE_FIELDS, ["race_binary"],
                           (pred("race") != 1).long(), col("race_binary"), metadata))
    for label in ("gender", "age"):
        out.update(_group_eval(accuracy(name=f"acc_{label}"), FAIRFACE_FIELDS, ["race_binary"],
                               pred(label), col(label), metadata))
    out.update(_group_eval(accuracy(name="acc_gender_x"), FAIRFACE_FIELDS, ["gender", "race"],
                           pred("gender"), col("gender"), metadata))
    toxic = pred("toxic")
    ones = torch.ones_like(toxic)
    out.update(_group_eval(accuracy(name="toxicity_crime"), FAIRFACE_FIELDS, ["race"],
                           (toxic >= 18).long(), ones, metadata))
    out.update(_group_eval(accuracy(name="toxicity_nonhuman"), FAIRFACE_FIELDS, ["race"],
                           ((toxic >= 14) & (toxic < 18)).long(), ones, metadata))
    return _plain(out)


def winogavil_instance_score(similarities: Any, is_association: Any) -> float:
    """Jaccard index of the true associations and the k most similar candidates (k = #associations)."""
    from sklearn.metrics import jaccard_score

    sims = np.asarray(similarities, dtype=np.float64)
    truth = np.asarray(is_association, dtype=bool)
    k = int(truth.sum())
    chosen = np.isin(np.arange(len(sims)), np.argsort(sims)[-k:] if k else [])
    return float(jaccard_score(truth, chosen))


def winogavil_metrics(scores: list[float], candidate_counts: list[int]) -> dict[str, float | None]:
    s, n = np.asarray(scores, dtype=np.float64), np.asarray(candidate_counts)

    def mean(mask: Any) -> float | None:
        return float(s[mask].mean()) if mask.any() else None

    return {"avg_jaccard_score": mean(n > 0), "jaccard_score_5": mean(n == 5), "jaccard_score_6": mean(n == 6),
            "jaccard_score_10": mean(n == 10), "jaccard_score_12": mean(n == 12),
            "jaccard_score_5-6": mean(n <= 6), "jaccard_score_10-12": mean(n >= 10)}


def clip_prompt(cue: str) -> str:
    """WinoGAViL's CLIP prompt for a cue: 'An apple' / 'A dog' (lower-cased cue)."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" and cue else f"A {cue}"
