"""``evaluate_model``: zero-shot evaluation of one model on a list of tasks into ``eval_results.jsonl``
(DataComp's tasks) and ``other_results.jsonl`` (the synthetic and the user's own tasks).

Tasks already in the results files are skipped (a killed evaluation resumes), unless ``overwrite``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from poolsieve.core.devices import resolve_device
from poolsieve.core.models import ModelSpec, load_model
from poolsieve.core.owned_folders import check_owned
from poolsieve.core.progress import Progress
from poolsieve.core.stage import option
from poolsieve.core.stage_log import library_output
from poolsieve.core.workspace import Workspace

from .aggregate import (
    OTHER_RESULTS_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    append_result,
    read_eval_folder,
    result_line,
    results_file_for,
    write_summary,
)
from .task_spec import resolve_tasks
from .tasks import TASK_SETS, Task
from .zeroshot import evaluate_task

EVAL_RECORDS = (SUMMARY_FILE, RESULTS_FILE, OTHER_RESULTS_FILE)  # what makes a folder poolsieve's evaluation


@dataclass
class EvalConfig:
    """The ``evaluate:`` section; each option is also a flag (``data_root`` -> ``--data-root``)."""

    subset: str | None = option(None, "evaluate the run of this subset, runs/NAME/ into evals/NAME/ (repeatable)")
    model: str | None = option(None, "evaluate this model instead: ARCH, ARCH:PRETRAINED_TAG, ARCH:/path/ckpt.pt "
                                     "or hf-hub:ORG/NAME")
    output: str | None = option(None, "results folder for --model (default <workspace>/evals/<arch>)")
    model_config: list[str] = option([], "register an open_clip model config JSON (its file name is the "
                                         "architecture name; repeatable)", metavar="JSON")
    tasks: str = option("synthetic", f"task set ({', '.join(TASK_SETS)}) or comma list of task keys")
    batch_size: int = option(64, "evaluation batch size")
    data_root: str | None = option(None, "local folder (or mirror url) with the wds_<task>_test datasets; "
                                         "default: the Hugging Face hub at $HF_ENDPOINT")
    cache_dir: str | None = option(None, "cache folder of the Hugging Face datasets (retrieval, WinoGAViL)")
    synthetic_samples: int | None = option(None, "images per synthetic task (default 600)")
    device: str = option("auto", "cpu, cuda or auto")
    num_workers: int = option(0, "data loader workers of the evaluation")
    custom_tasks: dict[str, str] | None = option(None, "name -> task folder (clip_benchmark webdataset layout)",
                                                 cli=False)
    trust_checkpoint: bool = option(False, "load a checkpoint that needs full unpickling (can run code in it; "
                                           "default: weights only)")


def evaluate_model(model_spec: ModelSpec | str, tasks: str | list[str] | list[Task], out_dir: str | Path,
                   config: EvalConfig | None = None, *, overwrite: bool = False,
                   name: str | None = None, workspace: Workspace | None = None,
                   within: str | Path | None = None) -> dict[str, Any]:
    """Evaluate ``model_spec`` on ``tasks``; write the results files and ``summary.json`` in ``out_dir``.

    Paths in ``summary.json`` are relative to ``workspace`` where they lie inside it (else as given), so a
    copied workspace keeps its summaries; the counts of this call (evaluated, skipped) are returned only.
    ``overwrite`` removes the results files first, only from an evaluation folder poolsieve wrote (inside
    ``within`` when given: ``core/owned_folders.py``).
    """

    config = config or EvalConfig()
    spec = ModelSpec.parse(model_spec)
    if config.trust_checkpoint:
        spec = replace(spec, trust_checkpoint=True)
    if isinstance(tasks, list) and tasks and all(isinstance(t, Task) for t in tasks):
        task_list: list[Task] = list(tasks)  # type: ignore[arg-type]
    else:
        task_list = resolve_tasks(tasks, config.custom_tasks)  # type: ignore[arg-type]
    out_dir = Path(out_dir)
    if overwrite and check_owned(out_dir, EVAL_RECORDS, inside=within, what="evaluation folder"):
        for file in (RESULTS_FILE, OTHER_RESULTS_FILE):
            (out_dir / file).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = read_eval_folder(out_dir)
    todo = [t for t in task_list if t.key not in done]
    device = resolve_device(config.device, who="evaluate.device")
    if todo:
        model, preprocess, tokenizer = load_model(spec, device=device)
        progress = Progress(f"evaluate {name or out_dir.name}", total=len(todo), unit="tasks", interval=0.0)
        for task in todo:
            start = time.monotonic()
            with library_output():  # clip_benchmark's progress bars go to the command's log
                metrics = evaluate_task(task, model, preprocess, tokenizer, device=device,
                                        batch_size=config.batch_size, data_root=config.data_root,
                                        cache_dir=config.cache_dir, synthetic_samples=config.synthetic_samples,
                                        num_workers=config.num_workers)
            append_result(out_dir / results_file_for(task), result_line(task, metrics, time.monotonic() - start))
            progress.update(1)
    results = read_eval_folder(out_dir)
    results = {t.key: results[t.key] for t in task_list if t.key in results}
    def stored(path: str | Path | None) -> str | None:
        return workspace.rel(path) if workspace is not None and path is not None else path

    checkpoint = spec.pretrained if spec.pretrained is None or not Path(spec.pretrained).is_file() \
        else stored(spec.pretrained)
    summary = write_summary(out_dir, results, {"name": name or out_dir.name, "model": spec.arch,
                                               "checkpoint": checkpoint,
                                               "results": stored(str(out_dir / RESULTS_FILE))})
    return dict(summary, evaluated=len(todo), skipped=len(task_list) - len(todo))
