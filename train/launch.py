"""Where a run trains: a child process here, Ray Train workers, or a SLURM batch script.

**Here** (``poolsieve train``, ``--gpus N``): the runner (``open_clip_runner``) runs as a child
process, under torchrun when ``gpus > 1``; it dies with its parent (``core/processes.py``), and its
output goes to ``train.log`` while progress follows open_clip's step lines.

**Ray** (``poolsieve train --ray-address auto``, or ``--ray-workers N``): a Ray Train
``TorchTrainer`` starts one worker per process (per GPU where the cluster has GPUs); Ray Train forms
the torch process group (nccl on GPUs, gloo on CPUs) and each worker runs open_clip's own trainer
(``open_clip_runner``) inside it. Rank 0 writes the run folder, so the workspace must be on storage
every node sees, as for the other stages.

**SLURM** (``poolsieve train --slurm-script job.sh``): writes an sbatch script equivalent to
DataComp's ``slurm_train.sh``: ``srun`` starts ``nodes x gpus`` tasks of the runner, open_clip
reads its rank from SLURM's variables, and a last step writes ``summary.json`` and ``info.pkl``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError, PoolsieveError
from poolsieve.core.formats import atomic_path
from poolsieve.core.processes import die_with_parent
from poolsieve.core.progress import Progress
from poolsieve.core.runtime import Runtime

from . import open_clip_runner
from .config import TrainConfig
from .open_clip_runner import ERROR_PREFIX
from .run_folder import RunSetup
from .runner_io import parse_train_line, runner_env


# ----------------------------------------------------------------------------------- here
def runner_command(argv: list[str], gpus: int | None = None) -> list[str]:
    """The child process: the runner module, under torchrun (one process per GPU) when ``gpus > 1``."""
    launcher = [sys.executable]
    if gpus and gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return [*launcher, "-m", "poolsieve.train.open_clip_runner", *argv]


def failure_line(lines: Sequence[str], what: str, log_path: Path) -> str:
    """One line for a failed run: the runner's own error line, else the last line that says error."""
    for line in reversed(lines):
        if ERROR_PREFIX in line:
            return line.split(ERROR_PREFIX, 1)[1].strip()
    last = next((ln.strip() for ln in reversed(lines) if re.search(r"error|exception", ln, re.I)),
                next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output"))
    return f"{what} failed: {last[:300]} (log: {log_path})"


def run_local(setup: RunSetup, config: TrainConfig, progress: Progress, done_before: int) -> None:
    """Run the runner (under torchrun for several GPUs) as a child process, following its log."""
    env = dict(os.environ, **runner_env(config.threads))
    cmd = runner_command(setup.argv, config.gpus)
    log_path = setup.out_dir / "train.log"
    tail: list[str] = []
    steps_done = done_before
    plan = setup.plan
    with open(log_path, "a") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, env=env, preexec_fn=partial(die_with_parent, signal.SIGTERM)) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                rec = parse_train_line(line)
                if rec is None:
                    continue
                step = rec["epoch"] * plan.steps_per_epoch + rec["epoch_samples"] // plan.batch_size
                if step > steps_done:
                    progress.update(step - steps_done, (step - steps_done) * plan.batch_size)
                    steps_done = step
        except BaseException:
            proc.kill()
            raise
        rc = proc.wait()
    if rc != 0:
        raise PoolsieveError(failure_line(tail, f"open_clip training (exit {rc})", log_path))


# ------------------------------------------------------------------------------------------ Ray
def ray_plan(config: Any, runtime: Any) -> tuple[Any, bool, int | None]:
    """(config with ``ray_workers`` set, whether workers use GPUs, CPUs per worker for data loading).

    Without ``ray_workers`` a cluster trains on all its GPUs, or on one CPU worker where it has none.
    """
    runtime = runtime or Runtime(executor="ray")
    ray = runtime.ensure_ray()
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    workers = config.ray_workers or max(1, gpus)
    use_gpu = gpus > 0
    if use_gpu and workers > gpus:
        raise ConfigError(f"--ray-workers {workers}: the Ray cluster has {gpus} GPU(s)")
    cpus = int(resources.get("CPU", 1)) // workers
    if workers > int(resources.get("CPU", 1)):
        raise ConfigError(f"--ray-workers {workers}: the Ray cluster has {int(resources.get('CPU', 1))} CPU(s)")
    return dataclasses.replace(config, ray_workers=workers), use_gpu, max(1, cpus - 1)


def _train_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: open_clip's trainer in the process group Ray Train formed."""
    os.environ.update(loop_config["env"])
    if loop_config.get("threads"):
        import torch

        torch.set_num_threads(loop_config["threads"])

    open_clip_runner.adopt_process_group()
    try:
        rc = open_clip_runner.run(loop_config["argv"])
    except open_clip_runner.RunnerError as e:  # the runner's one-line errors
        raise RuntimeError(ERROR_PREFIX + e.message) from None
    if rc:
        raise RuntimeError("open_clip training reported an error; see out.log")


def _follow(log_path: Path, plan: Any, progress: Progress, done_before: int, stop: threading.Event) -> None:
    """Progress from open_clip's ``out.log`` while Ray Train runs (it is written by rank 0)."""
    steps_done, offset = done_before, 0
    while not stop.wait(1.0):
        if not log_path.exists():
            continue
        with open(log_path) as fh:
            fh.seek(offset)
            chunk = fh.read()
            offset = fh.tell()
        for line in chunk.splitlines():
            rec = parse_train_line(line)
            if rec:
                step = rec["epoch"] * plan.steps_per_epoch + rec["epoch_samples"] // plan.batch_size
                if step > steps_done:
                    progress.update(step - steps_done, (step - steps_done) * plan.batch_size)
                    steps_done = step


def run_ray_train(setup: Any, config: Any, runtime: Any, use_gpu: bool, progress: Progress, done_before: int) -> None:
    """Train ``setup`` on ``config.ray_workers`` Ray Train workers; errors end in one line."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    env = dict(runner_env(config.threads))
    if os.environ.get("POOLSIEVE_SHARD_LOG"):
        env["POOLSIEVE_SHARD_LOG"] = os.environ["POOLSIEVE_SHARD_LOG"]
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"argv": setup.argv, "env": env, "threads": config.threads},
        scaling_config=ScalingConfig(num_workers=config.ray_workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="ray_train", storage_path=str(setup.out_dir)),
    )
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(setup.out_dir / "out.log", setup.plan, progress, done_before,
                                                      stop), daemon=True)
    follower.start()
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps the worker's error; report its message in one line
        text = str(e)
        line = next((ln.split(ERROR_PREFIX, 1)[1] for ln in text.splitlines() if ERROR_PREFIX in ln), None)
        line = line or next((ln.strip() for ln in reversed(text.splitlines()) if "Error" in ln), text[:300])
        raise PoolsieveError(f"Ray Train run failed: {line.strip()} (log: {setup.out_dir / 'out.log'})") from None
    finally:
        stop.set()
        follower.join(timeout=5)
        time.sleep(0)


# ---------------------------------------------------------------------------------------- SLURM
def slurm_script(setup: Any, config: Any, *, partition: str | None = None, python: str | None = None,
                 master_port: int = 12802) -> str:
    """An sbatch script that trains ``setup`` on ``config.nodes`` nodes x ``config.gpus`` GPUs each."""
    gpus = config.gpus or 1
    python = python or sys.executable
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name=poolsieve-train-{setup.out_dir.name}",
        f"#SBATCH --nodes={config.nodes}",
        f"#SBATCH --ntasks-per-node={gpus}",
        f"#SBATCH --gpus-per-node={gpus}",
        f"#SBATCH --cpus-per-task={setup.workers + 2}",
        f"#SBATCH --output={setup.out_dir}/slurm-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
    ]
    if partition:
        header.append(f"#SBATCH --partition={partition}")
    env = runner_env(config.threads) | {"PYTHONFAULTHANDLER": "1"}
    runner = " ".join(shlex.quote(a) for a in [python, "-m", "poolsieve.train.open_clip_runner", *setup.argv])
    body = [
        "# Generated by `poolsieve train --slurm-script`; submit with sbatch. A requeued or resubmitted job",
        "# resumes from checkpoints/epoch_latest.pt. The run folder and the data must be on shared storage.",
        "set -euo pipefail",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f'export MASTER_PORT="${{MASTER_PORT:-{master_port}}}"',
        *[f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())],
        f"srun --cpu-bind=v --accel-bind=gn {runner}",
        " ".join(shlex.quote(a) for a in [python, "-m", "poolsieve.train.trainer", "finish", str(setup.out_dir)]),
    ]
    return "\n".join(header + [""] + body) + "\n"


def write_slurm_script(path: str | Path, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o755)
    return path
