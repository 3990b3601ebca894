"""``evaluate_model``: zero-shot evaluation of one model on a list of tasks into ``results.jsonl``.

Tasks already in the results file are skipped (a killed evaluation resumes), unless ``overwrite``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from poolsieve.core.models import ModelSpec, load_model
from poolsieve.core.progress import Progress

from .aggregate import RESULTS_FILE, append_result, read_results, result_line, write_summary
from .tasks import CLASSIFICATION, RETRIEVAL, SYNTHETIC, Task, resolve_tasks

SUPPORTED_TYPES = (CLASSIFICATION, RETRIEVAL, SYNTHETIC)


@dataclass
class EvalConfig:
    """The ``evaluate:`` config section."""

    tasks: str = "synthetic"
    batch_size: int = 64
    data_root: str | None = None
    cache_dir: str | None = None
    synthetic_samples: int | None = None
    device: str = "auto"
    num_workers: int = 0
    trust_checkpoint: bool = False  # load a checkpoint that needs full unpickling (runs code in it)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_model(model_spec: ModelSpec | str, tasks: str | list[str] | list[Task], out_dir: str | Path,
                   config: EvalConfig | None = None, *, overwrite: bool = False,
                   name: str | None = None) -> dict[str, Any]:
    """Evaluate ``model_spec`` on ``tasks``; write ``out_dir/results.jsonl`` and ``summary.json``."""

    config = config or EvalConfig()
    spec = ModelSpec.parse(model_spec)
    if config.trust_checkpoint:
        spec = replace(spec, trust_checkpoint=True)
    if isinstance(tasks, list) and tasks and all(isinstance(t, Task) for t in tasks):
        task_list: list[Task] = list(tasks)  # type: ignore[arg-type]
    else:
        task_list = resolve_tasks(tasks)  # type: ignore[arg-type]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    if overwrite and results_path.exists():
        results_path.unlink()
    done = read_results(results_path)
    unsupported = [t for t in task_list if t.task_type not in SUPPORTED_TYPES]
    if unsupported:
        print(f"evaluate: skipping {len(unsupported)} task(s) that need DataComp's dedicated evaluation code, "
              f"not implemented yet: {', '.join(t.name for t in unsupported)}", file=sys.stderr)
    todo = [t for t in task_list if t.key not in done and t not in unsupported]
    device = pick_device(config.device)
    if todo:
        from .zeroshot import evaluate_task

        model, preprocess, tokenizer = load_model(spec, device=device)
        progress = Progress(f"evaluate {name or out_dir.name}", total=len(todo), unit="tasks", interval=0.0)
        for task in todo:
            start = time.monotonic()
            metrics = evaluate_task(task, model, preprocess, tokenizer, device=device,
                                    batch_size=config.batch_size, data_root=config.data_root,
                                    cache_dir=config.cache_dir, synthetic_samples=config.synthetic_samples,
                                    num_workers=config.num_workers)
            append_result(results_path, result_line(task, metrics, time.monotonic() - start))
            progress.update(1)
    results = read_results(results_path)
    results = {t.key: results[t.key] for t in task_list if t.key in results}
    return write_summary(out_dir, results, {"name": name or out_dir.name, "model": spec.arch,
                                            "checkpoint": spec.pretrained, "results": str(results_path),
                                            "evaluated": len(todo), "skipped": len(task_list) - len(todo),
                                            "unsupported": [t.key for t in unsupported]})
