"""core/devices.py and core/processes.py: one device/precision resolver, one die-with-parent helper."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poolsieve.core.devices import cuda_available, resolve_device, resolve_precision, task_resources
from poolsieve.core.errors import ConfigError


def test_device_resolution() -> None:
    assert resolve_device("auto") == ("cuda" if cuda_available() else "cpu")
    assert resolve_device("CPU") == "cpu" and resolve_device(None) in ("cpu", "cuda")
    with pytest.raises(ConfigError, match=r"score\.device must be one of auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu", who="score.device")
    if not cuda_available():
        for asked in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match=f"{asked} was asked for, but torch sees no CUDA GPU"):
                resolve_device(asked)
    assert task_resources("cuda:0") == {"num_gpus": 1} and task_resources("cpu") == {}


def test_precision_resolution() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("auto", "cuda", gpu_default="amp") == "amp"  # open_clip training's names
    assert resolve_precision("fp16", "cpu") == "fp16"


def _state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return next(line.split()[1] for line in text.splitlines() if line.startswith("State:"))


@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    script = f"""
import os, sys, time
from poolsieve.core.processes import die_with_parent
if os.fork() == 0:
    die_with_parent()
    open({str(marker)!r} + ".tmp", "w").write(str(os.getpid()))
    os.replace({str(marker)!r} + ".tmp", {str(marker)!r})
    time.sleep(120)
    sys.exit(0)
while not os.path.exists({str(marker)!r}):
    time.sleep(0.01)
os._exit(0)  # the parent dies; the child must follow
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    child = int(marker.read_text())
    deadline = time.monotonic() + 10
    while _state(child) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    state = _state(child)
    if state not in (None, "Z"):
        os.kill(child, 9)
    assert state in (None, "Z"), f"the child outlived its parent (state {state})"
