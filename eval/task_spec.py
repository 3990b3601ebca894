"""Which tasks a ``--tasks`` value names: task sets, keys and names of the registry, and the user's own folders."""

from __future__ import annotations

from poolsieve.core.errors import ConfigError

from .custom_tasks import custom_task, looks_like_folder
from .tasks import TASK_SETS, TASKS, Task, get_task


def resolve_tasks(spec: str | list[str] | tuple[str, ...], custom: dict[str, str] | None = None) -> list[Task]:
    """``synthetic`` / ``datacomp38`` / a comma list of task keys, names, set names, names registered in
    ``custom`` (name -> folder) or folders of the user's own tasks -> tasks, in order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    custom = custom or {}
    out: list[Task] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item in custom:
            found = [custom_task(custom[item], name=item)]
        elif item not in TASK_SETS and item not in TASKS and looks_like_folder(item):
            found = [custom_task(item)]
        else:
            found = [get_task(key) for key in TASK_SETS.get(item, (item,))]
        for task in found:
            if task not in out:
                out.append(task)
    if not out:
        raise ConfigError("no evaluation tasks given")
    return out
