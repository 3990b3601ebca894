"""What a launcher and the open_clip runner process exchange: the runner's environment and its log lines.

Every launcher (a child process here, torchrun, Ray Train workers, a SLURM job) starts
``open_clip_runner`` with ``runner_env`` and follows its progress through ``parse_train_line``.
"""

from __future__ import annotations

import re
from typing import Any

_TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\](.*)")
_LOSS = re.compile(r"(\w+_loss|Loss): ([0-9.eE+-]+) \(([0-9.eE+-]+)\)")


def runner_env(threads: int | None) -> dict[str, str]:
    """The runner's environment on top of the launcher's (``threads``: torch threads, None for torch's choice)."""
    env = {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def parse_train_line(line: str) -> dict[str, Any] | None:
    """``Train Epoch: 0 [640/1280 (50%)] ... Contrastive_loss: 3.1 (3.4) ...`` -> a dict, else None."""
    m = _TRAIN_LINE.search(line)
    if not m:
        return None
    losses = {name.lower(): float(val) for name, val, _ in _LOSS.findall(m.group(5))}
    return {"epoch": int(m.group(1)), "epoch_samples": int(m.group(2)), "samples_per_epoch": int(m.group(3)),
            "loss": losses.get("loss", sum(losses.values())) if losses else None,
            "losses": {k: v for k, v in losses.items() if k != "loss"}}
