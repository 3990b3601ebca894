"""Zero-shot classification and retrieval of one task, with clip_benchmark's metric code.

Classification: clip_benchmark's ``zero_shot_classifier`` (prompt-ensemble class embeddings) and
``run_classification`` (logits); top-k accuracy and mean per-class recall are computed here, because
clip_benchmark 1.6.2's ``accuracy`` fails under NumPy 2 (``float()`` of a 1-element array). Retrieval: ``zeroshot_retrieval.evaluate`` (image and
text recall@k); DataComp's main retrieval metric ``mean_recall@1`` is the mean of the two recall@1.
"""

from __future__ import annotations

import math
from typing import Any

from poolsieve.core.errors import PoolsieveError

from .tasks import CLASSIFICATION, RETRIEVAL, SYNTHETIC, Task


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
    """acc1, acc5 (None below 5 classes) and mean per-class recall (sklearn's balanced accuracy)."""
    from sklearn.metrics import balanced_accuracy_score

    if len(target) == 0:
        raise PoolsieveError("the test set yielded no samples")
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = ranked.eq(target.view(-1, 1))
    return {
        "acc1": float(hits[:, :1].any(dim=1).float().mean()),
        "acc5": float(hits[:, :5].any(dim=1).float().mean()) if num_classes >= 5 else None,
        "mean_per_class_recall": float(balanced_accuracy_score(target.numpy(), logits.argmax(dim=1).numpy())),
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


def evaluate_task(task: Task, model: Any, preprocess: Any, tokenizer: Any, *, device: str = "cpu",
                  batch_size: int = 64, data_root: str | None = None, cache_dir: str | None = None,
                  synthetic_samples: int | None = None, num_workers: int = 0) -> dict[str, Any]:
    """Metrics of ``task`` (with ``main_metric``; ``num_samples`` where known)."""
    import torch

    from poolsieve.core.safe_decoding import install_safe_decoding

    from . import special_tasks
    from .hub_datasets import load_wds_dataset, make_dataloader

    install_safe_decoding()  # every webdataset loader below (clip_benchmark's too) decodes without unpickling
    with torch.no_grad():
        if task.task_type == SYNTHETIC:
            from .synthetic_tasks import JpegLabelDataset, make_synthetic_task

            data = make_synthetic_task(task.key, synthetic_samples or task.size)
            dataset = JpegLabelDataset(data, preprocess)
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
            metrics = classify(model, tokenizer, loader, data.classnames, data.templates, device)
            metrics["num_samples"] = len(dataset)
        elif task.task_type == CLASSIFICATION:
            from .custom_tasks import fill_defaults

            dataset = load_wds_dataset(task, preprocess, data_root, cache_dir)
            fill_defaults(task, dataset)
            if dataset.classes is None or dataset.templates is None:
                raise PoolsieveError(f"{task.key}: the test set has no classnames.txt / templates")
            loader = make_dataloader(dataset, task.task_type, batch_size, num_workers)
            metrics = classify(model, tokenizer, loader, dataset.classes, dataset.templates, device)
        elif task.task_type == RETRIEVAL and task.source == "hf" and not task.folder:
            from .hub_datasets import HFRetrievalDataset, load_hf_test_set

            dataset = HFRetrievalDataset(load_hf_test_set(task, data_root), preprocess)
            ks = tuple(k for k in (1, 5, 10) if k <= len(dataset)) or (1,)
            metrics = retrieve(model, tokenizer, make_dataloader(dataset, RETRIEVAL, batch_size, num_workers), device,
                               recall_k=ks)
            metrics["num_samples"] = len(dataset)
        elif task.task_type == RETRIEVAL:
            dataset = load_wds_dataset(task, preprocess, data_root, cache_dir)
            loader = make_dataloader(dataset, task.task_type, batch_size, num_workers)
            metrics = retrieve(model, tokenizer, loader, device)
        else:
            metrics = special_tasks.evaluate_special(task, model, preprocess, tokenizer, device=device,
                                                     batch_size=batch_size, data_root=data_root,
                                                     num_workers=num_workers)
    metrics = _clean_nested(metrics)
    metrics["main_metric"] = metrics.get(task.main_metric) if task.main_metric else None
    return metrics


def _clean_nested(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN -> None, numpy / torch scalars -> float, so every line is plain JSON."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if v is None or isinstance(v, (str, bool, int)):
            out[k] = v
        else:
            f = float(v)
            out[k] = None if math.isnan(f) else f
    return out
