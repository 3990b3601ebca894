"""Zero-shot classification and retrieval metrics, with clip_benchmark's metric code.

Classification: clip_benchmark's ``zero_shot_classifier`` (prompt-ensemble class embeddings) and
``run_classification`` (logits); top-k accuracy and mean per-class recall are computed here, because
clip_benchmark 1.6.2's ``accuracy`` fails under NumPy 2 (``float()`` of a 1-element array). Retrieval: ``zeroshot_retrieval.evaluate`` (image and
text recall@k); DataComp's main retrieval metric ``mean_recall@1`` is the mean of the two recall@1.
"""

from __future__ import annotations

import math
from typing import Any

from poolsieve.core.errors import PoolsieveError


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """Plain floats; NaN (e.g. top-5 of a task with fewer than 5 classes) becomes None."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        v = float(v) if v is not None else None
        out[k] = None if v is not None and math.isnan(v) else v
    return out


def classify(model: Any, tokenizer: Any, dataloader: Any, classnames: list[str], templates: list[str],
             device: str = "cpu") -> dict[str, Any]:
    """Zero-shot classification metrics (acc1, acc5 when there are 5+ classes, mean_per_class_recall)."""
    logits, target = classify_logits(model, tokenizer, dataloader, classnames, templates, device)
    return classification_metrics(logits, target, len(classnames))


def classify_logits(model: Any, tokenizer: Any, dataloader: Any, classnames: list[str], templates: list[str],
                    device: str = "cpu") -> tuple[Any, Any]:
    """clip_benchmark's prompt-ensemble classifier applied to every sample: (logits, labels)."""
    from clip_benchmark.metrics import zeroshot_classification as zsc

    classifier = zsc.zero_shot_classifier(model, tokenizer, classnames, templates, device, amp=False)
    logits, target = zsc.run_classification(model, classifier, dataloader, device, amp=False)
    if target.ndim != 1:
        raise PoolsieveError("multi-label classification is not supported")
    if len(target) == 0:
        raise PoolsieveError("the test set yielded no samples")
    return logits, target


def classification_metrics(logits: Any, target: Any, num_classes: int) -> dict[str, Any]:
    """acc1, acc5 (None below 5 classes) and mean per-class recall (sklearn's balanced accuracy), with
    ``num_samples`` (the test images) and ``num_classes``: what chance and an interval need."""
    from sklearn.metrics import balanced_accuracy_score

    if len(target) == 0:
        raise PoolsieveError("the test set yielded no samples")
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = ranked.eq(target.view(-1, 1))
    return {
        "acc1": float(hits[:, :1].any(dim=1).float().mean()),
        "acc5": float(hits[:, :5].any(dim=1).float().mean()) if num_classes >= 5 else None,
        "mean_per_class_recall": float(balanced_accuracy_score(target.numpy(), logits.argmax(dim=1).numpy())),
        "num_samples": int(len(target)),
        "num_classes": int(num_classes),
    }


def retrieve(model: Any, tokenizer: Any, dataloader: Any, device: str = "cpu",
             recall_k: tuple[int, ...] = (1, 5, 10)) -> dict[str, Any]:
    """Zero-shot image-text retrieval metrics, plus DataComp's ``mean_recall@1``."""
    from clip_benchmark.metrics import zeroshot_retrieval

    metrics = _clean(zeroshot_retrieval.evaluate(model, dataloader, tokenizer, device, amp=False,
                                                 recall_k_list=list(recall_k)))
    if 1 in recall_k:
        metrics["mean_recall@1"] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    return metrics
