"""Zero-shot evaluation of one task: its data loaded by kind, then the metrics of ``metrics``
(classification and retrieval) or of ``special_tasks`` (WILDS, fairness, WinoGAViL)."""

from __future__ import annotations

import math
from typing import Any

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.safe_decoding import install_safe_decoding

from . import special_tasks
from .custom_tasks import fill_defaults
from .hub_datasets import HFRetrievalDataset, load_hf_test_set, load_wds_dataset, make_dataloader
from .metrics import classify, retrieve
from .synthetic_tasks import JpegLabelDataset, make_synthetic_task
from .tasks import CLASSIFICATION, RETRIEVAL, SYNTHETIC, Task


def evaluate_task(task: Task, model: Any, preprocess: Any, tokenizer: Any, *, device: str = "cpu",
                  batch_size: int = 64, data_root: str | None = None, cache_dir: str | None = None,
                  synthetic_samples: int | None = None, num_workers: int = 0) -> dict[str, Any]:
    """Metrics of ``task`` (with ``main_metric``; ``num_samples`` where known)."""
    import torch

    install_safe_decoding()  # every webdataset loader below (clip_benchmark's too) decodes without unpickling
    with torch.no_grad():
        if task.task_type == SYNTHETIC:
            data = make_synthetic_task(task.key, synthetic_samples or task.size)
            dataset = JpegLabelDataset(data, preprocess)
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
            metrics = classify(model, tokenizer, loader, data.classnames, data.templates, device)
            metrics["num_samples"] = len(dataset)
        elif task.task_type == CLASSIFICATION:
            dataset = load_wds_dataset(task, preprocess, data_root, cache_dir)
            fill_defaults(task, dataset)
            if dataset.classes is None or dataset.templates is None:
                raise PoolsieveError(f"{task.key}: the test set has no classnames.txt / templates")
            loader = make_dataloader(dataset, task.task_type, batch_size, num_workers)
            metrics = classify(model, tokenizer, loader, dataset.classes, dataset.templates, device)
        elif task.task_type == RETRIEVAL and task.source == "hf" and not task.folder:
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
