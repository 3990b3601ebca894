"""Evaluation of DataComp's WILDS, fairness and WinoGAViL tasks (metrics in ``group_metrics``).

WILDS, Dollar Street and GeoDE are zero-shot classification on their webdatasets (clip_benchmark's
classifier, as for the other tasks) plus the per-sample metadata vector (``.npy``) that DataComp's
metrics group by; it is read in shard order and checked against the labels. FairFace and UTKFace have
no labels: their class names and templates are ``objective:name`` pairs (race, gender, age, toxic), one
zero-shot classifier per objective, and the ``.npy`` holds the true attributes. WinoGAViL is the
Hugging Face dataset ``nlphuji/winogavil``: a cue, its candidate images and the associations to pick.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from poolsieve.core.errors import InputError, PoolsieveError

from . import group_metrics as gm
from .hub_datasets import load_hf_test_set, load_wds_dataset, make_dataloader, read_wds_fields, wds_urls
from .metrics import classification_metrics, classify_logits
from .tasks import FAIRNESS, WILDS, WINOGAVIL, Task

WILDS_METRICS = {"wilds/iwildcam": gm.iwildcam_metrics, "wilds/camelyon17": gm.camelyon17_metrics,
                 "wilds/fmow": gm.fmow_metrics}
IMAGE_KEYS = "webp;png;jpg;jpeg"


def evaluate_special(task: Task, model: Any, preprocess: Any, tokenizer: Any, *, device: str, batch_size: int,
                     data_root: str | None, num_workers: int = 0) -> dict[str, Any]:
    if task.task_type == WINOGAVIL:
        return evaluate_winogavil(task, model, preprocess, tokenizer, device=device, data_root=data_root)
    if task.key in ("fairness/fairface", "fairness/utkface"):
        return evaluate_fairface(task, model, preprocess, tokenizer, device=device, batch_size=batch_size,
                                 data_root=data_root)
    if task.task_type in (WILDS, FAIRNESS):
        return evaluate_grouped(task, model, preprocess, tokenizer, device=device, batch_size=batch_size,
                                data_root=data_root, num_workers=num_workers)
    raise PoolsieveError(f"task {task.key}: no evaluation for task type {task.task_type!r}")


def _metadata(task: Task, data_root: str | None, labels: Any) -> np.ndarray:
    rows = read_wds_fields(task, ("cls", "npy"), data_root)
    cls = np.array([int(c) for c, _ in rows])
    if len(cls) != len(labels) or not np.array_equal(cls, np.asarray(labels)):
        raise InputError(task.wds_name, "per-sample metadata does not line up with the labels")
    return np.stack([np.asarray(m).reshape(-1) for _, m in rows])


def evaluate_grouped(task: Task, model: Any, preprocess: Any, tokenizer: Any, *, device: str, batch_size: int,
                     data_root: str | None, num_workers: int = 0) -> dict[str, Any]:
    """Zero-shot classification plus DataComp's group metrics (WILDS, Dollar Street, GeoDE)."""
    dataset = load_wds_dataset(task, preprocess, data_root)
    if dataset.classes is None or dataset.templates is None:
        raise InputError(task.wds_name, "no classnames.txt / zeroshot_classification_templates.txt")
    loader = make_dataloader(dataset, "zeroshot_classification", batch_size, num_workers)
    logits, target = classify_logits(model, tokenizer, loader, dataset.classes, dataset.templates, device)
    metrics = classification_metrics(logits, target, len(dataset.classes))
    metadata = _metadata(task, data_root, target.numpy())
    pred = logits.argmax(dim=1).numpy()
    if task.key in WILDS_METRICS:
        metrics.update(WILDS_METRICS[task.key](pred, target.numpy(), metadata))
    elif task.key == "fairness/dollar_street":
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices.numpy()
        metrics.update(gm.dollar_street_metrics(top5, target.numpy(), metadata))
    elif task.key == "fairness/geode":
        metrics.update(gm.geode_metrics(pred, target.numpy(), metadata))
    metrics["num_samples"] = len(target)
    return metrics


def split_objectives(items: list[str]) -> dict[str, list[str]]:
    """``["race:black", "gender:male", ...]`` -> ``{"race": ["black"], "gender": ["male"], ...}``."""
    out: dict[str, list[str]] = defaultdict(list)
    for item in items:
        objective, sep, value = item.partition(":")
        if not sep:
            raise ValueError(f"expected 'objective:value', got {item!r}")
        out[objective].append(value)
    return out


def evaluate_fairface(task: Task, model: Any, preprocess: Any, tokenizer: Any, *, device: str, batch_size: int,
                      data_root: str | None) -> dict[str, Any]:
    """One zero-shot classifier per objective; predictions against the attributes in each ``.npy``."""
    import torch
    import webdataset as wds
    from clip_benchmark.metrics import zeroshot_classification as zsc

    info = load_wds_dataset(task, None, data_root)
    try:
        names, templates = split_objectives(info.classes or []), split_objectives(info.templates or [])
    except ValueError as e:
        raise InputError(task.wds_name, f"class names / templates: {e}") from None
    missing = [o for o in gm.FAIRFACE_OBJECTIVES if not names.get(o) or not templates.get(o)]
    if missing:
        raise InputError(task.wds_name, f"no class names or templates for {', '.join(missing)}")
    classifiers = [zsc.zero_shot_classifier(model, tokenizer, names[o], templates[o], device, amp=False)
                   for o in gm.FAIRFACE_OBJECTIVES]
    data = (wds.WebDataset(wds_urls(task, data_root), shardshuffle=False, nodesplitter=lambda s: s,
                           empty_check=False)
            .decode("pil").to_tuple(IMAGE_KEYS, "npy").map_tuple(preprocess, None))
    preds, metadata = [], []
    for images, meta in torch.utils.data.DataLoader(data, batch_size=batch_size):
        feats = torch.nn.functional.normalize(model.encode_image(images.to(device)), dim=-1)
        preds.append(torch.stack([(feats @ c).argmax(dim=1).cpu() for c in classifiers], dim=1))
        metadata.append(torch.as_tensor(np.asarray(meta)).reshape(len(images), -1))
    if not preds:
        raise PoolsieveError(f"{task.key}: the test set yielded no samples")
    metrics = gm.fairface_metrics(torch.cat(preds), torch.cat(metadata))
    metrics["num_samples"] = int(sum(len(p) for p in preds))
    return metrics


def evaluate_winogavil(task: Task, model: Any, preprocess: Any, tokenizer: Any, *, device: str,
                       data_root: str | None) -> dict[str, Any]:
    """Per instance: rank the candidates by similarity to the cue's prompt; Jaccard against the truth."""
    import torch

    data = load_hf_test_set(task, data_root)
    scores, counts = [], []
    for row in data:
        images = torch.stack([preprocess(img.convert("RGB")) for img in row["candidate_images"]]).to(device)
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer([gm.clip_prompt(row["cue"])]).to(device)),
                                            dim=-1)
        sims = (txt @ img.T).squeeze(0).cpu().numpy()
        truth = np.isin(row["candidates"], row["associations"])
        scores.append(gm.winogavil_instance_score(sims, truth))
        counts.append(len(images))
    if not scores:
        raise PoolsieveError(f"{task.key}: the test set yielded no samples")
    return {**gm.winogavil_metrics(scores, counts), "num_samples": len(scores)}
