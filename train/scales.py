"""The scale table: a fixed training budget (samples seen) and recipe per scale.

``small`` .. ``xlarge`` follow DataComp's training configs (model, global batch, learning rate, warmup,
beta2, samples seen); ``tiny`` is poolsieve's CPU scale (a 32 px CLIP that trains in about a minute on
two cores) and ``debug`` is DataComp's smoke-test scale. Every subset trained at one scale sees the
same number of samples, whatever its size: that is what makes data-filtering methods comparable.

A budget here is what a run trains, exactly (``plan_budget`` honours a budget or refuses it, never
rounds). DataComp's budgets are the samples its launcher trains: its 12.8M at small scale is split into 5
epochs of whole batches of 4,096, a multiple of its 4 data-loader workers each (open_clip's rounding), so a
DataComp run sees 5 x 628 x 4,096 = 12,861,440 samples; that is the small row's budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from poolsieve.core.errors import ConfigError


@dataclass(frozen=True)
class Scale:
    """A training recipe; ``batch_size`` is global (split over GPUs and accumulation steps)."""

    name: str
    model: str
    samples_seen: int
    batch_size: int
    learning_rate: float
    warmup: int
    beta2: float | None = None
    num_checkpoints: int = 5
    weight_decay: float = 0.2


DATACOMP_WORKERS = 4  # DataComp's launcher default (train.py --workers)
DATACOMP_CHECKPOINTS = 5  # DataComp's launcher default (train.py --num_checkpoints): its epochs


def as_datacomp_trains(nominal: int, batch_size: int) -> int:
    """The samples a DataComp run of budget ``nominal`` sees: ``nominal // 5`` per epoch (its train.py),
    rounded by open_clip up to whole global batches, then up to a multiple of the 4 workers' batches."""
    batches = math.ceil(nominal // DATACOMP_CHECKPOINTS / batch_size)
    batches = math.ceil(batches / DATACOMP_WORKERS) * DATACOMP_WORKERS
    return DATACOMP_CHECKPOINTS * batches * batch_size


SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        # CPU scale, tuned on the built-in pool: colour is learned
        # within a few hundred steps, shape needs the higher learning rate and small batches.
        # Four epochs, so a kill loses at most a quarter of the run (each epoch ends in a checkpoint).
        Scale("tiny", "poolsieve-tiny", 12_288, 64, 2e-3, 20, 0.98, 4, 0.1),
        # DataComp's scale_configs.py budgets (128k, 12.8M, 128M, 1.28B, 12.8B) as its launcher trains them
        Scale("debug", "ViT-B-32", as_datacomp_trains(128_000, 1024), 1024, 1e-4, 500),
        Scale("small", "ViT-B-32", as_datacomp_trains(12_800_000, 4096), 4096, 5e-4, 500),
        Scale("medium", "ViT-B-32", as_datacomp_trains(128_000_000, 4096), 4096, 5e-4, 500),
        Scale("large", "ViT-B-16", as_datacomp_trains(1_280_000_000, 8192), 8192, 5e-4, 500),
        Scale("xlarge", "ViT-L-14", as_datacomp_trains(12_800_000_000, 90112), 90112, 1e-3, 10_000, 0.95),
    )
}


def get_scale(name: str) -> Scale:
    try:
        return SCALES[name]
    except KeyError:
        raise ConfigError(f"unknown scale {name!r}; known: {', '.join(SCALES)}") from None


def scale_table() -> list[tuple[str, str, int, int, str, int]]:
    """Rows (scale, model, samples seen, batch, lr, warmup) for help texts and reports."""
    return [(s.name, s.model, s.samples_seen, s.batch_size, f"{s.learning_rate:g}", s.warmup)
            for s in SCALES.values()]
