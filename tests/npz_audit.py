"""Which embedding files each process opens: an audit hook (``sys.addaudithook``) that logs every open of
a ``scores/*.npz`` file with the Ray node and task (or actor) doing it, to the folder named by
``POOLSIEVE_TEST_OPEN_LOG``. ``install`` is Ray's ``worker_process_setup_hook`` in the cluster test (the
workers import this module through ``PYTHONPATH``) and is called in the driver too."""

from __future__ import annotations

import os
import sys

ENV = "POOLSIEVE_TEST_OPEN_LOG"


def install() -> None:
    folder = os.environ.get(ENV)
    if not folder:
        return

    def hook(event: str, args: tuple) -> None:
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        if os.environ.get(ENV) != folder:  # unset (the test is over): the hook, which stays, logs no more
            return
        path = os.fsdecode(args[0])
        if not (path.endswith(".npz") and os.sep + "scores" + os.sep in path):
            return
        node = task = "-"
        try:
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                node = ctx.get_node_id() or "-"
                task = ctx.get_task_id() or ctx.get_actor_id() or "-"
        except Exception:  # noqa: BLE001 - logging must never break the open it watches
            pass
        with open(os.path.join(folder, f"{os.getpid()}.log"), "a") as f:
            f.write(f"{node} {task} {os.path.basename(path)}\n")

    sys.addaudithook(hook)


def opens(folder: str) -> list[tuple[int, str, str, str]]:
    """(pid, node, task, file) of every logged open."""
    out = []
    for name in os.listdir(folder):
        pid = int(name.split(".")[0])
        with open(os.path.join(folder, name)) as f:
            out += [(pid, *line.split()) for line in f if line.strip()]
    return out
