"""A training budget as open_clip runs it: ``samples_seen`` split into epochs of whole global batches.

``plan_budget`` turns a scale's budget (samples seen, global batch, checkpoints) into a
``TrainingPlan``, exactly or refused with the nearest budgets that work; ``loader_workers`` picks the
data-loader workers that divide an epoch's batches, so open_clip's per-worker rounding adds nothing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from poolsieve.core.errors import ConfigError


@dataclass(frozen=True)
class TrainingPlan:
    """How a budget becomes open_clip's flags: ``epochs`` x ``steps_per_epoch`` optimizer steps of
    ``batch_size`` samples (global: ``per_process_batch`` x ``world_size`` x ``accum_freq``)."""

    epochs: int
    steps_per_epoch: int
    batch_size: int
    per_process_batch: int
    world_size: int = 1
    accum_freq: int = 1

    @property
    def samples_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size

    @property
    def samples_seen(self) -> int:
        return self.epochs * self.samples_per_epoch


def plan_budget(samples_seen: int, batch_size: int, epochs: int, world_size: int = 1,
                accum_freq: int = 1) -> TrainingPlan:
    """Split ``samples_seen`` into ``epochs`` of whole global batches, exactly, or refuse.

    open_clip trains whole batches and epochs of equal length, so a budget is honoured exactly when it is
    a multiple of ``epochs x batch_size``; any other budget is refused in one line that names the nearest
    budgets that work (never rounded: the samples seen a run reports are the budget it was given). The
    data-loader workers then divide each epoch's batches (``loader_workers``), so open_clip's per-worker
    rounding adds nothing either.
    """
    if batch_size % (world_size * accum_freq):
        raise ConfigError(f"the global batch of {batch_size} cannot be split over {world_size} process(es) x "
                          f"{accum_freq} accumulation step(s); choose a world size that divides it")
    if samples_seen % (epochs * batch_size):
        raise ConfigError(budget_refusal(samples_seen, batch_size, epochs))
    per_process = batch_size // (world_size * accum_freq)
    return TrainingPlan(epochs, samples_seen // (epochs * batch_size), batch_size, per_process, world_size,
                        accum_freq)


def budget_refusal(samples_seen: int, batch_size: int, epochs: int) -> str:
    """Why ``samples_seen`` cannot be trained exactly, with the nearest budgets and checkpoint counts that work."""
    unit = epochs * batch_size
    below, above = samples_seen // unit * unit, (samples_seen // unit + 1) * unit
    nearest = f"{below:,} or {above:,}" if below else f"{above:,}"
    text = (f"a budget of {samples_seen:,} samples seen cannot be trained exactly: {epochs} checkpoint(s) "
            f"(epochs) of whole batches of {batch_size:,} take a multiple of {unit:,}; the nearest budgets that "
            f"work are {nearest} (--samples-seen)")
    if samples_seen % batch_size == 0:  # whole batches: other checkpoint counts split them evenly
        steps = samples_seen // batch_size
        counts = sorted((d for d in range(1, min(steps, 4 * epochs + 4) + 1) if steps % d == 0),
                        key=lambda d: (abs(d - epochs), d))[:4]
        shown = [str(d) for d in sorted(counts)]
        text += f", or {samples_seen:,} with --num-checkpoints " + (", ".join(shown[:-1]) + " or " if shown[:-1] else "") + shown[-1]
    return text


def loader_workers(requested: int, plan: TrainingPlan, cpus: int | None = None) -> int:
    """The data-loader workers to start: at most ``requested`` and the CPUs (None: as requested, for
    another machine), and dividing the epoch's loader batches, so open_clip's rounding of an epoch up to
    whole batches per worker adds nothing to the plan's samples seen."""
    if requested <= 0:
        return 0
    batches = plan.steps_per_epoch * plan.accum_freq
    most = requested if cpus is None else min(requested, max(1, cpus))
    return next(w for w in range(most, 0, -1) if batches % w == 0)


def fewer_workers_note(workers: int, requested: int, plan: TrainingPlan, cpus: int | None) -> str:
    """The warning for fewer data-loader workers than asked: why, and the budgets that would allow them."""
    most = requested if cpus is None else min(requested, max(1, cpus))
    text = (f"{workers} data-loader worker(s) per process instead of {requested} "
            + (f"({cpus} CPU(s) each; " if cpus is not None else "(")
            + f"an epoch's {plan.steps_per_epoch * plan.accum_freq} batches split evenly over them); samples seen "
              f"stay {plan.samples_seen:,}")
    if workers < most:  # the budget, not the machine, decided: say which budgets give the workers
        unit = plan.epochs * plan.batch_size * most // math.gcd(most, plan.accum_freq)
        below, above = plan.samples_seen // unit * unit, (plan.samples_seen // unit + 1) * unit
        text += f"; {most} workers need a budget that is a multiple of {unit:,}, e.g. " + \
            (f"{below:,} or {above:,}" if below else f"{above:,}")
    return text


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
