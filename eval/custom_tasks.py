"""A user's own evaluation task: a folder in clip_benchmark's webdataset layout.

The folder holds ``test/nshards.txt`` and ``test/0.tar`` ... and, for zero-shot classification,
``classnames.txt`` and ``zeroshot_classification_templates.txt`` (one per line). ``dataset_type.txt``
containing ``retrieval`` makes it an image-text retrieval task (``.txt`` captions, one per line).
Missing class names are taken from clip_benchmark's list for the folder's name (e.g. ``cifar10``),
missing templates from clip_benchmark's templates for that name, else its ImageNet templates.
The task is named after the folder (``wds_`` and ``_test`` dropped) or the name it is registered under
in the config (``evaluate: {custom_tasks: {NAME: FOLDER}}``); results, inspect and the report carry it.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from poolsieve.core.errors import InputError

from .tasks import CLASSIFICATION, RETRIEVAL, Task

CUSTOM_GROUP = None  # the user's tasks count in no DataComp group or average


def looks_like_folder(item: str) -> bool:
    return "/" in item or item.startswith(".") or Path(item).expanduser().is_dir()


def task_name(folder: Path) -> str:
    name = folder.name
    if name.startswith("wds_"):
        name = name[len("wds_"):]
    return name.removesuffix("_test") or folder.name


def custom_task(folder: str | Path, name: str | None = None) -> Task:
    """The Task of a clip_benchmark webdataset folder (classification, or retrieval by dataset_type.txt)."""
    root = Path(folder).expanduser()
    if not (root / "test" / "nshards.txt").is_file():
        raise InputError(root, "not a task folder: expected clip_benchmark's webdataset layout "
                               "(test/nshards.txt, test/0.tar, classnames.txt, zeroshot_classification_templates.txt)")
    kind = (root / "dataset_type.txt").read_text().strip().lower() if (root / "dataset_type.txt").exists() else ""
    name = name or task_name(root)
    if kind == "retrieval":
        return Task(f"custom/{name}", name, RETRIEVAL, "mean_recall@1", 0, folder=str(root.resolve()))
    return Task(f"custom/{name}", name, CLASSIFICATION, "acc1", 0, folder=str(root.resolve()))


def default_classnames_and_templates(task: Task) -> tuple[list[str] | None, list[str]]:
    """clip_benchmark's class names (None when it has none) and templates for ``task``'s name."""
    base = files("clip_benchmark") / "datasets"
    classnames = json.loads((base / "en_classnames.json").read_text())
    templates = json.loads((base / "en_zeroshot_classification_templates.json").read_text())
    keys = [task.name, task.name.lower(), Path(task.folder or "").name]
    found_names = next((classnames[k] for k in keys if k in classnames), None)
    found_templates = next((templates[k] for k in keys if k in templates), templates["imagenet1k"])
    return found_names, found_templates


def fill_defaults(task: Task, dataset: object) -> None:
    """Give a classification dataset without classnames / templates files clip_benchmark's defaults."""
    if task.task_type != CLASSIFICATION:
        return
    names, templates = default_classnames_and_templates(task)
    if getattr(dataset, "classes", None) is None:
        if names is None:
            raise InputError(Path(task.folder or task.key) / "classnames.txt",
                             "missing, and clip_benchmark has no class names for a task of this name")
        dataset.classes = names  # type: ignore[attr-defined]
    if getattr(dataset, "templates", None) is None:
        dataset.templates = templates  # type: ignore[attr-defined]
