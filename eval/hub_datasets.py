"""Test sets of DataComp's tasks: clip_benchmark's ``wds/`` webdatasets, from a folder or the hub.

A task's data lives in ``<data_root>/wds_<key>_test/`` (``test/nshards.txt``, ``test/0.tar`` ...,
``classnames.txt``, ``zeroshot_classification_templates.txt``, ``dataset_type.txt``) when a local
``data_root`` is given, else on the Hugging Face hub as ``djghosh/wds_<key>_test``, read through
``$HF_ENDPOINT`` (default ``https://huggingface.co``) with the hub's ``/resolve/main/`` file urls.
A mirror is any server with that url layout (a 127.0.0.1 one in the tests). Loading itself is
clip_benchmark's ``build_dataset``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from poolsieve.core.errors import InputError, PoolsieveError

from .tasks import Task

DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def dataset_location(task: Task, data_root: str | Path | None = None) -> str:
    """Where ``task``'s webdataset is: a local folder, or the hub url of the dataset repo's files."""
    if data_root is not None and "://" not in str(data_root):
        root = Path(data_root)
        for folder in (root / task.wds_name, root):
            if (folder / "test" / "nshards.txt").exists():
                return str(folder)
        raise InputError(root / task.wds_name, f"no test/nshards.txt for task {task.key} (expected the "
                                               f"clip_benchmark webdataset layout of {task.hub_repo})")
    base = str(data_root).rstrip("/") if data_root is not None else f"{hub_endpoint()}/datasets"
    return f"{base}/{task.hub_repo}/resolve/main"


def load_wds_dataset(task: Task, transform: Any, data_root: str | Path | None = None,
                     cache_dir: str | Path | None = None) -> Any:
    """clip_benchmark's webdataset for ``task`` (classification: image, label; retrieval: image, captions)."""
    from clip_benchmark.datasets.builder import build_dataset

    location = dataset_location(task, data_root)
    try:
        dataset = build_dataset(dataset_name=task.clip_benchmark_name, root=location, transform=transform,
                                split="test", download=False, task=task.task_type,
                                wds_cache_dir=str(cache_dir) if cache_dir else None)
        return dataset
    except FileNotFoundError as e:
        raise InputError(location, f"cannot read the test set of {task.key} ({e}); give a local copy with "
                                   "--data-root or a reachable HF_ENDPOINT") from None
    except (AssertionError, ValueError) as e:
        raise PoolsieveError(f"{location}: the test set of {task.key} is not usable ({e})") from None


def make_dataloader(dataset: Any, task_type: str, batch_size: int, num_workers: int = 0) -> Any:
    """A DataLoader over a clip_benchmark webdataset (retrieval batches keep caption lists)."""
    import torch
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    from .tasks import RETRIEVAL

    collate = image_captions_collate_fn if task_type == RETRIEVAL else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=collate)
