"""The built-in pool: coloured-shape images with captions that describe them, defects mixed in.

``poolsieve generate`` writes a CommonPool-style pool into a workspace:

* ``metadata/{:05d}.parquet``: uid, url, text, original_width, original_height, sha256 (CommonPool's
  columns, unchanged) plus poolsieve's own label columns ``poolsieve_defect`` (``LABEL_COLUMN``: one of
  ``DEFECTS`` or ``"none"``) and ``poolsieve_difficulty`` (``easy``, ``hard`` or empty); the download
  stage reads only the columns it needs, so the labels never reach a shard;
* ``synthetic/images/{uid}.jpg``: the image bytes that the local HTTP server serves at each url;
* ``synthetic/labels.parquet``: the truth per uid: shape, colour, defect, difficulty, what the caption says;
* ``synthetic/eval_images/{task}.tar``: every image of the built-in evaluation tasks (the held-out
  ``synthetic_shape`` and ``synthetic_colour`` classification sets, ``eval_samples`` each, and the
  retrieval set), labelled by task: the set that ``decontaminate`` removes from the pool;
* ``synthetic/tasks/synthetic_retrieval/``: the held-out image-caption retrieval task (clip_benchmark's
  webdataset layout, ``evaluate: {custom_tasks: {synthetic_retrieval: FOLDER}}``);
* ``synthetic/target/target.tar``: a labelled image set from the tasks' distribution (not the test
  images): the image-based filter's target, as ImageNet's training set is DataComp's.

What each defect is, and which filter is meant to catch it:

| defect | what | caught by |
| --- | --- | --- |
| mismatched_caption | the caption names another shape and colour | CLIP score |
| non_english | German, French, Spanish or Italian caption | basic (language) |
| too_small | image under 100 px a side | basic (size) |
| extreme_aspect | aspect ratio 6 | basic (aspect) |
| short_caption | empty or one-word caption | basic (words) |
| duplicate_image | the same bytes as a clean image, new uid and caption | dedup (exact) |
| near_duplicate | a clean image a few levels brighter or darker, re-encoded | SemDeDup |
| off_task | a pattern (stripes, dots, ...) in colours no task asks about: the pool's shift | image-based |
| eval_copy | the bytes of an evaluation-task image | decontaminate |
| eval_near_copy | an evaluation-task image upscaled and re-encoded | decontaminate |

Independently, ``hard_rate`` of the freshly drawn shapes are hard examples (small, faded, among grey
clutter): D2 pruning's balance of easy and hard. Everything is a deterministic function of the seed.
``eval_leaks`` checks that no pool image is an evaluation image except the planted, labelled copies.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import io
import ipaddress
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from PIL import Image

from poolsieve.core.config import build
from poolsieve.core.formats import atomic_path
from poolsieve.core.progress import print_summary
from poolsieve.core.shapes import (
    COLOURS,
    SHAPES,
    TEXTURE_COLOURS,
    TEXTURES,
    draw_shape,
    draw_texture,
    encode_jpeg,
    english_caption,
    generate_clean_pairs,
    make_uid,
    texture_caption,
)
from poolsieve.core.shard_reader import iter_tar_samples
from poolsieve.core.workspace import Workspace
from poolsieve.eval.synthetic_tasks import HELD_OUT_SEEDS
from poolsieve.pipeline.demo.image_server import serve_command

LABEL_COLUMN = "poolsieve_defect"          # in metadata/*.parquet: a DEFECTS name or "none"
DIFFICULTY_COLUMN = "poolsieve_difficulty"  # "easy" / "hard" for freshly drawn shapes, else ""
CLEAN = "none"
DEFECTS = ("mismatched_caption", "non_english", "too_small", "extreme_aspect", "duplicate_image",
           "near_duplicate", "short_caption", "off_task", "eval_copy", "eval_near_copy")
COPY_DEFECTS = ("duplicate_image", "near_duplicate")  # copies of the pool's own clean images
DEFAULT_DEFECT_RATES = {
    "mismatched_caption": 0.15,
    "non_english": 0.08,
    "too_small": 0.06,
    "extreme_aspect": 0.04,
    "duplicate_image": 0.04,
    "near_duplicate": 0.04,
    "short_caption": 0.05,
    "off_task": 0.08,
    "eval_copy": 0.005,
    "eval_near_copy": 0.005,
}
# The held-out sets written for evaluation and decontamination (seeds apart from every pool and seed set).
RETRIEVAL_TASK = "synthetic_retrieval"
RETRIEVAL_SEED = 90_210_003
TARGET_SEED = 90_210_004
EVAL_IMAGE_SIZE = 64
COPY_CANDIDATES = 64  # eval copies come from each task's first images, which every eval size includes
# Non-English captions (German, French, Spanish, Italian) of the same content.
FOREIGN_SHAPES = {
    "de": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck"},
    "fr": {"circle": "cercle", "square": "carré", "triangle": "triangle"},
    "es": {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo"},
    "it": {"circle": "cerchio", "square": "quadrato", "triangle": "triangolo"},
}
FOREIGN_COLOURS = {
    "de": {"red": "roter", "green": "grüner", "blue": "blauer", "yellow": "gelber", "purple": "violetter", "orange": "oranger"},
    "fr": {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet", "orange": "orange"},
    "es": {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado", "orange": "naranja"},
    "it": {"red": "rosso", "green": "verde", "blue": "blu", "yellow": "giallo", "purple": "viola", "orange": "arancione"},
}
FOREIGN_TEMPLATES = {
    "de": "ein Foto von einem {colour} {shape} auf einem einfachen Hintergrund",
    "fr": "une photo d'un {shape} {colour} sur un fond uni",
    "es": "una foto de un {shape} {colour} sobre un fondo liso",
    "it": "una foto di un {shape} {colour} su uno sfondo semplice",
}
SHORT_CAPTIONS = ("", "image", "photo", "img", "untitled")


@dataclass
class PoolSpec:
    """How to generate a pool. ``base_url`` is where the image server will listen."""

    num_samples: int = 3000
    samples_per_file: int = 1000
    image_size: int = 256
    seed: int = 0
    base_url: str = "http://127.0.0.1:8765"
    defect_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DEFECT_RATES))
    hard_rate: float = 0.3
    eval_samples: int = 600       # images per held-out classification task written to eval_images/
    retrieval_samples: int = 300  # image-caption pairs of the held-out retrieval task
    target_samples: int = 300     # images of the image-based filter's target set


@dataclass
class EvalImage:
    task: str
    index: int
    jpeg: bytes
    shape: str
    colour: str


def evaluation_images(spec: PoolSpec) -> list[EvalImage]:
    """Every image of the built-in evaluation tasks, in task order (as the evaluate stage draws them)."""
    out = []
    for task, seed in (*HELD_OUT_SEEDS.items(), (RETRIEVAL_TASK, RETRIEVAL_SEED)):
        n = spec.retrieval_samples if task == RETRIEVAL_TASK else spec.eval_samples
        for i, (_uid, jpeg, _caption, shape, colour) in enumerate(generate_clean_pairs(n, seed, EVAL_IMAGE_SIZE)):
            out.append(EvalImage(task, i, jpeg, shape, colour))
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_evaluation_sets(root: Path, spec: PoolSpec, images: list[EvalImage]) -> None:
    """``eval_images/{task}.tar``, the retrieval task folder and the image-based target set."""
    eval_dir = Workspace(root).synthetic_dir / "eval_images"
    eval_dir.mkdir(parents=True, exist_ok=True)
    for task in dict.fromkeys(im.task for im in images):
        with atomic_path(eval_dir / f"{task}.tar") as tmp, tarfile.open(tmp, "w") as tar:
            for im in (im for im in images if im.task == task):
                _add(tar, f"{im.index:06d}.jpg", im.jpeg)
                _add(tar, f"{im.index:06d}.json", json.dumps({"label": task, "index": im.index}).encode())
    folder = Workspace(root).synthetic_dir / "tasks" / RETRIEVAL_TASK
    (folder / "test").mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "test" / "0.tar") as tmp, tarfile.open(tmp, "w") as tar:
        pairs = generate_clean_pairs(spec.retrieval_samples, RETRIEVAL_SEED, EVAL_IMAGE_SIZE)
        for i, (_uid, jpeg, caption, shape, colour) in enumerate(pairs):
            _add(tar, f"s{i:06d}.jpg", jpeg)
            _add(tar, f"s{i:06d}.txt", f"{caption}\na {colour} {shape}".encode())
    (folder / "test" / "nshards.txt").write_text("1\n")
    (folder / "dataset_type.txt").write_text("retrieval\n")
    target = Workspace(root).synthetic_dir / "target"
    target.mkdir(parents=True, exist_ok=True)
    with atomic_path(target / "target.tar") as tmp, tarfile.open(tmp, "w") as tar:
        for i, (_uid, jpeg, _caption, shape, _colour) in enumerate(
                generate_clean_pairs(spec.target_samples, TARGET_SEED, EVAL_IMAGE_SIZE)):
            _add(tar, f"t{i:06d}.jpg", jpeg)
            _add(tar, f"t{i:06d}.json", json.dumps({"label": shape}).encode())


def _assign_defects(spec: PoolSpec, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(rate * n)`` samples per defect, the rest clean, in a seeded random order."""
    n = spec.num_samples
    defects = np.full(n, CLEAN, dtype=object)
    order = rng.permutation(n)
    start = 0
    for name in DEFECTS:
        count = int(round(spec.defect_rates.get(name, 0.0) * n))
        defects[order[start:start + count]] = name
        start += count
    return defects


def _perturb(data: bytes, rng: np.random.Generator) -> bytes:
    """A near copy: brightness nudged by a few levels, re-encoded at another JPEG quality (other bytes,
    the same picture: what re-uploads and re-compressions of one image look like)."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.int16)
    arr = np.clip(arr + int(rng.choice([-4, -3, -2, 2, 3, 4])), 0, 255).astype(np.uint8)
    return encode_jpeg(Image.fromarray(arr, "RGB"), quality=int(rng.integers(70, 86)))


def _upscaled(data: bytes, size: int) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return encode_jpeg(im.convert("RGB").resize((size, size), Image.BICUBIC), quality=88)


def _caption(defect: str, shape: str, colour: str, srng: np.random.Generator) -> tuple[str, str, str, str]:
    """(text, language, caption_shape, caption_colour) of a shape image with ``defect``."""
    if defect == "mismatched_caption":
        caption_shape = SHAPES[(SHAPES.index(shape) + int(srng.integers(1, len(SHAPES)))) % len(SHAPES)]
        colours = list(COLOURS)
        caption_colour = colours[(colours.index(colour) + int(srng.integers(1, len(colours)))) % len(colours)]
        return english_caption(caption_shape, caption_colour, srng), "en", caption_shape, caption_colour
    if defect == "non_english":
        language = list(FOREIGN_TEMPLATES)[int(srng.integers(len(FOREIGN_TEMPLATES)))]
        text = FOREIGN_TEMPLATES[language].format(colour=FOREIGN_COLOURS[language][colour],
                                                  shape=FOREIGN_SHAPES[language][shape])
        return text, language, shape, colour
    if defect == "short_caption":
        return SHORT_CAPTIONS[int(srng.integers(len(SHORT_CAPTIONS)))], "en", "", ""
    return english_caption(shape, colour, srng), "en", shape, colour


@dataclass
class _Drawing:
    """A pool being drawn: its rows and labels by sample index, and the clean samples drawn so far (in
    index order), which the copies of pass 2 copy."""

    spec: PoolSpec
    images_dir: Path
    copy_sources: list[EvalImage]
    rows: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    clean: list[int] = field(default_factory=list)


def generate_pool(root: str | Path, spec: PoolSpec) -> dict[str, Any]:
    """Write metadata parquets, image files, the label side table and the evaluation sets under ``root``."""
    unknown = set(spec.defect_rates) - set(DEFECTS)
    if unknown:
        raise ValueError(f"unknown defect(s) {sorted(unknown)}; known: {DEFECTS}")
    if sum(spec.defect_rates.values()) > 1:
        raise ValueError("defect rates add up to more than 1")
    if not 0 <= spec.hard_rate <= 1:
        raise ValueError(f"hard_rate must be in [0, 1], got {spec.hard_rate}")
    root = Path(root)
    ws = Workspace(root)
    images_dir = ws.synthetic_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    evaluation = evaluation_images(spec)
    write_evaluation_sets(root, spec, evaluation)
    defects = _assign_defects(spec, np.random.default_rng(spec.seed))
    n = spec.num_samples
    drawing = _Drawing(spec, images_dir, [im for im in evaluation if im.index < COPY_CANDIDATES],
                       [{} for _ in range(n)], [{} for _ in range(n)])
    # Pass 1 draws every sample that is not a copy of a pool image; pass 2 copies clean ones of pass 1.
    for i in sorted(range(n), key=lambda j: defects[j] in COPY_DEFECTS):
        _draw_sample(drawing, i, defects[i])
    meta_dir = ws.metadata_dir
    meta_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(drawing.rows)
    for f, lo in enumerate(range(0, n, spec.samples_per_file)):
        with atomic_path(meta_dir / f"{f:05d}.parquet") as tmp:
            df.iloc[lo:lo + spec.samples_per_file].to_parquet(tmp, index=False)
    with atomic_path(ws.labels_path) as tmp:
        pd.DataFrame(drawing.labels).to_parquet(tmp, index=False)
    counts = pd.Series(defects).value_counts().to_dict()
    return {"samples": n, "metadata_files": -(-n // spec.samples_per_file), "defects": counts,
            "hard": int(sum(1 for lab in drawing.labels if lab["difficulty"] == "hard")),
            "evaluation images": len(evaluation), "images_dir": str(images_dir), "base_url": spec.base_url}


def _draw_sample(d: _Drawing, i: int, defect: str) -> None:
    """Sample ``i`` with its ``defect``, drawn from its own random stream (``[seed, i]``): its image file
    written, its row and labels filled in; a clean one joins ``d.clean`` for the copies drawn after it."""
    spec, rows, labels = d.spec, d.rows, d.labels
    srng = np.random.default_rng([spec.seed, i])
    uid = make_uid(srng)
    shape = SHAPES[int(srng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(srng.integers(len(COLOURS)))]
    w = h = spec.image_size
    difficulty = ""
    source = ""
    if defect in COPY_DEFECTS and d.clean:
        # the source comes earlier in the pool where it can, so "keep the first" keeps the original
        earlier = d.clean[:bisect.bisect_left(d.clean, i)] or d.clean
        j = earlier[int(srng.integers(len(earlier)))]
        shape, colour, difficulty = labels[j]["shape"], labels[j]["colour"], labels[j]["difficulty"]
        data = (d.images_dir / f"{rows[j]['uid']}.jpg").read_bytes()
        if defect == "near_duplicate":
            data = _perturb(data, srng)
        w, h = rows[j]["original_width"], rows[j]["original_height"]
        source = rows[j]["uid"]
        text, language, caption_shape, caption_colour = _caption(CLEAN, shape, colour, srng)
    elif defect in ("eval_copy", "eval_near_copy"):
        im = d.copy_sources[int(srng.integers(len(d.copy_sources)))]
        shape, colour, difficulty, source = im.shape, im.colour, "easy", f"{im.task}:{im.index}"
        data = im.jpeg if defect == "eval_copy" else _upscaled(im.jpeg, spec.image_size)
        w = h = EVAL_IMAGE_SIZE if defect == "eval_copy" else spec.image_size
        text, language, caption_shape, caption_colour = _caption(CLEAN, shape, colour, srng)
    elif defect == "off_task":
        texture = TEXTURES[int(srng.integers(len(TEXTURES)))]
        tcolour = list(TEXTURE_COLOURS)[int(srng.integers(len(TEXTURE_COLOURS)))]
        data = encode_jpeg(draw_texture(texture, tcolour, w, h, srng))
        shape = colour = caption_shape = caption_colour = ""
        text, language = texture_caption(texture, tcolour, srng), "en"
    else:
        if defect == "too_small":
            w = h = int(srng.integers(32, 100))
        elif defect == "extreme_aspect":
            w, h = spec.image_size * 2, max(32, spec.image_size // 3)
            if srng.random() < 0.5:
                w, h = h, w
        hard = bool(srng.random() < spec.hard_rate)
        difficulty = "hard" if hard else "easy"
        data = encode_jpeg(draw_shape(shape, colour, w, h, srng, hard=hard))
        text, language, caption_shape, caption_colour = _caption(defect, shape, colour, srng)
        if defect == CLEAN:
            d.clean.append(i)
    (d.images_dir / f"{uid}.jpg").write_bytes(data)
    rows[i] = {"uid": uid, "url": f"{spec.base_url.rstrip('/')}/images/{uid}.jpg", "text": text,
               "original_width": w, "original_height": h, "sha256": hashlib.sha256(data).hexdigest(),
               LABEL_COLUMN: defect, DIFFICULTY_COLUMN: difficulty}
    labels[i] = {"uid": uid, "shape": shape, "colour": colour, "defect": defect, "difficulty": difficulty,
                 "language": language, "caption_shape": caption_shape, "caption_colour": caption_colour,
                 "copy_of": source}


def eval_leaks(root: str | Path) -> Any:
    """Pool rows whose image bytes are those of an evaluation image (``synthetic/eval_images``):
    a DataFrame of uid, label (``poolsieve_defect``) and the task image it copies. Only the planted,
    labelled ``eval_copy`` rows may appear; anything else is a leak."""
    ws = Workspace(Path(root))
    where: dict[str, str] = {}
    for tar in sorted((ws.synthetic_dir / "eval_images").glob("*.tar")):
        for s in iter_tar_samples(tar):
            if s.image is not None:
                where[hashlib.sha256(s.image).hexdigest()] = f"{tar.stem}:{s.key}"
    meta = pd.concat([pd.read_parquet(f, columns=["uid", "sha256", LABEL_COLUMN])
                      for f in sorted(ws.metadata_dir.glob("*.parquet"))], ignore_index=True)
    hits = meta[meta["sha256"].isin(where)].copy()
    hits["copies"] = hits["sha256"].map(where)
    return hits.reset_index(drop=True)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-samples", type=int, help="pairs in the pool (default 3000)")
    p.add_argument("--samples-per-file", type=int, help="rows per metadata parquet (default 1000)")
    p.add_argument("--image-size", type=int, help="side of a normal image in pixels (default 256)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--base-url", help="where the image server will listen (default http://127.0.0.1:8765)")


def run_cli(ctx: Any, args: argparse.Namespace) -> int:
    ws = ctx.workspace(create=True)
    spec = build(PoolSpec, ctx.section("generate"), "generate", {
        "num_samples": args.num_samples, "samples_per_file": args.samples_per_file,
        "image_size": args.image_size, "seed": args.seed, "base_url": args.base_url})
    serve = serve_command(ws.root, spec.base_url)  # a base url the image server cannot answer stops here
    summary = generate_pool(ws.root, spec)
    print_summary("generate", [("workspace", ws.root), ("samples", summary["samples"]),
                               ("metadata files", summary["metadata_files"]),
                               ("defects", ", ".join(f"{k}={v}" for k, v in sorted(summary["defects"].items()))),
                               ("serve images with", serve),
                               ("then download with", _download_hint(ws.root, spec.base_url))])
    return 0


def _download_hint(root: Any, base_url: str) -> str:
    """The download command for a generated pool: its server's address must be allowed (it is not global)."""
    host = urlsplit(base_url).hostname or "127.0.0.1"
    try:
        network = str(ipaddress.ip_network(host))
    except ValueError:
        network = "<the server's address>/32"
    return f"poolsieve download -w {root} --allow-network {network}"
