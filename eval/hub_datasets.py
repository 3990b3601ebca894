"""Test sets of the evaluation tasks, read from where DataComp's ``download_evalsets.py`` puts them.

With ``--data-root DIR`` (DataComp's ``--data_dir``), a webdataset task is the folder
``DIR/wds_<key>_test/`` (``test/nshards.txt``, ``test/0.tar`` ..., ``classnames.txt``,
``zeroshot_classification_templates.txt``) and Flickr, MSCOCO and WinoGAViL are the Hugging Face
datasets ``nlphuji/<name>`` in ``datasets``' cache ``DIR/hf_cache`` (read offline: a local copy never
waits on the network). Without a data root, webdatasets stream from ``$HF_ENDPOINT`` (default
``https://huggingface.co``) with the hub's ``/resolve/main/`` urls and the Hugging Face datasets load
through ``datasets`` as DataComp does. A data root that is a url is a mirror with the hub's layout.
Webdataset loading itself is clip_benchmark's ``build_wds_dataset``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from poolsieve.core.errors import InputError, PoolsieveError

from .tasks import RETRIEVAL, Task

DEFAULT_ENDPOINT = "https://huggingface.co"
HF_CACHE = "hf_cache"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def is_local(data_root: str | Path | None) -> bool:
    return data_root is not None and "://" not in str(data_root)


def dataset_location(task: Task, data_root: str | Path | None = None) -> str:
    """Where ``task``'s webdataset is: a local folder, or the hub url of the dataset repo's files."""
    if task.folder:
        return task.folder
    if is_local(data_root):
        root = Path(data_root)  # type: ignore[arg-type]
        for folder in (root / task.wds_name, root):
            if (folder / "test" / "nshards.txt").exists():
                return str(folder)
        raise InputError(root / task.wds_name, f"no test/nshards.txt for task {task.key} (expected the "
                                               f"clip_benchmark webdataset layout of {task.hub_repo})")
    base = str(data_root).rstrip("/") if data_root is not None else f"{hub_endpoint()}/datasets"
    return f"{base}/{task.hub_repo}/resolve/main"


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """clip_benchmark prints 'WARNING: classnames.txt not found'; poolsieve reports that itself."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def load_wds_dataset(task: Task, transform: Any, data_root: str | Path | None = None,
                     cache_dir: str | Path | None = None) -> Any:
    """clip_benchmark's webdataset for ``task`` (classification: image, label; retrieval: image, captions),
    with ``classes`` and ``templates`` (None where the folder has no file for them)."""
    from clip_benchmark.datasets.builder import build_wds_dataset

    location = dataset_location(task, data_root)
    try:
        with _quiet_stdout():
            return build_wds_dataset(task.short_key, transform=transform, split="test", data_dir=location,
                                     cache_dir=str(cache_dir) if cache_dir else None)
    except FileNotFoundError as e:
        raise InputError(location, f"cannot read the test set of {task.key} ({e}); give a local copy with "
                                   "--data-root or a reachable HF_ENDPOINT") from None
    except (AssertionError, ValueError) as e:
        raise PoolsieveError(f"{location}: the test set of {task.key} is not usable ({e})") from None


def wds_urls(task: Task, data_root: str | Path | None = None) -> str:
    """The brace pattern of ``task``'s test shards (for reading per-sample metadata)."""
    location = dataset_location(task, data_root)
    if "://" in location:
        with urllib.request.urlopen(f"{location}/test/nshards.txt", timeout=30) as r:  # noqa: S310
            nshards = int(r.read().decode().strip())
    else:
        nshards = int((Path(location) / "test" / "nshards.txt").read_text().strip())
    return f"{location}/test/{{0..{nshards - 1}}}.tar"


def read_wds_fields(task: Task, fields: tuple[str, ...], data_root: str | Path | None = None) -> list[tuple]:
    """``fields`` of every test sample in shard order, images not decoded (e.g. ``("cls", "npy")``)."""
    import webdataset as wds

    dataset = wds.WebDataset(wds_urls(task, data_root), shardshuffle=False, nodesplitter=lambda s: s,
                             empty_check=False).decode().to_tuple(*fields)
    try:
        return list(dataset)
    except (KeyError, ValueError) as e:
        raise InputError(dataset_location(task, data_root), f"the test set of {task.key} lacks {fields} "
                                                            f"per sample ({e})") from None


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Switch ``datasets`` and ``huggingface_hub`` to offline mode for the block (their documented flag)."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    if offline:
        datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """Silence the per-retry warnings of huggingface_hub / datasets; the caller reports one line."""
    import datasets

    loggers = {n: logging.getLogger(n) for n in ("huggingface_hub", "datasets", "fsspec", "filelock")}
    levels = {n: lg.level for n, lg in loggers.items()}
    bars = datasets.utils.logging.is_progress_bar_enabled()
    for lg in loggers.values():
        lg.setLevel(logging.CRITICAL)
    datasets.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lg in loggers.items():
            lg.setLevel(levels[n])
        if bars:
            datasets.utils.logging.enable_progress_bar()


def load_hf_test_set(task: Task, data_root: str | Path | None = None) -> Any:
    """``datasets.load_dataset(nlphuji/<name>, split="test")``: from ``DATA_ROOT/hf_cache`` offline when a
    local data root is given (DataComp's downloader fills that cache), else from the hub."""
    import datasets

    local = is_local(data_root)
    cache_dir = str(Path(data_root) / HF_CACHE) if local else None  # type: ignore[arg-type]
    where = cache_dir or hub_endpoint()
    try:
        with quiet_hub_logs(), hub_offline(local):
            return datasets.load_dataset(task.hf_dataset, split="test", cache_dir=cache_dir)
    except (ConnectionError, OSError, ValueError, FileNotFoundError,
            datasets.exceptions.DatasetNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("fetch it with `poolsieve evaluate --download DIR`" if local
                else "give a local copy with --data-root or a reachable HF_ENDPOINT")
        raise InputError(where, f"cannot load {task.hf_dataset} (test split): {first}; {hint}") from None


class HFRetrievalDataset:
    """A map-style dataset of (image, captions) over an ``nlphuji`` retrieval set (``image``, ``caption``)."""

    def __init__(self, hf_dataset: Any, transform: Any):
        self.data = hf_dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, list[str]]:
        row = self.data[i]
        captions = row["caption"]
        return self.transform(row["image"].convert("RGB")), list(captions) if not isinstance(captions, str) else [captions]


def make_dataloader(dataset: Any, task_type: str, batch_size: int, num_workers: int = 0) -> Any:
    """A DataLoader over a clip_benchmark webdataset (retrieval batches keep caption lists)."""
    import torch
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    collate = image_captions_collate_fn if task_type == RETRIEVAL else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=collate)
