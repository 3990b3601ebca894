"""Held-out synthetic classification tasks: name the shape, name the colour.

Images come from ``core.shapes.generate_clean_pairs`` with seeds no pool or seed set uses,
so a model never saw them in training. Prompts are ensembles in the pool's caption style: the shape
task averages ``"a photo of a {colour} {c}"``-style prompts over all colours, the colour task over
all shapes, so each task asks about one attribute only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from poolsieve.core.shapes import COLOURS, SHAPES, generate_clean_pairs

# Far from the seeds the pool (0..), tests and quickstart seed sets use.
HELD_OUT_SEEDS = {"synthetic_shape": 90_210_001, "synthetic_colour": 90_210_002}
PROMPT_FORMS = ("a photo of a {colour} {shape}", "a simple drawing of a {colour} {shape}",
                "a {colour} {shape} on a plain background")


@dataclass(frozen=True)
class SyntheticTaskData:
    """What a zero-shot classifier needs: jpeg images with labels, class names and prompt templates."""

    images: list[bytes]
    labels: list[int]
    classnames: list[str]
    templates: list[str]


def shape_templates() -> list[str]:
    return [form.format(colour=colour, shape="{c}") for form in PROMPT_FORMS for colour in COLOURS]


def colour_templates() -> list[str]:
    return [form.format(colour="{c}", shape=shape) for form in PROMPT_FORMS for shape in SHAPES]


def make_synthetic_task(key: str, num_samples: int = 600, image_size: int = 64,
                        seed: int | None = None) -> SyntheticTaskData:
    """Draw the held-out images of ``synthetic_shape`` or ``synthetic_colour``."""
    if key not in HELD_OUT_SEEDS:
        raise ValueError(f"unknown synthetic task {key!r}; known: {', '.join(HELD_OUT_SEEDS)}")
    seed = HELD_OUT_SEEDS[key] if seed is None else seed
    classnames = list(SHAPES) if key == "synthetic_shape" else list(COLOURS)
    images, labels = [], []
    for _uid, jpeg, _caption, shape, colour in generate_clean_pairs(num_samples, seed, image_size):
        images.append(jpeg)
        labels.append(classnames.index(shape if key == "synthetic_shape" else colour))
    templates = shape_templates() if key == "synthetic_shape" else colour_templates()
    return SyntheticTaskData(images, labels, classnames, templates)


class JpegLabelDataset:
    """A map-style torch dataset over jpeg bytes and labels; ``classes`` as clip_benchmark expects."""

    def __init__(self, data: SyntheticTaskData, transform):
        self.data = data
        self.transform = transform
        self.classes = data.classnames
        self.templates = data.templates

    def __len__(self) -> int:
        return len(self.data.images)

    def __getitem__(self, i: int):
        img = Image.open(io.BytesIO(self.data.images[i])).convert("RGB")
        return self.transform(img), self.data.labels[i]
