"""Train a CLIP scorer on your own seed data: the scorer to use when no pretrained weights can be had.

Offline, or for a domain no pretrained CLIP knows, a small CLIP trained on a clean seed set scores a
pool well enough to filter it (the data-filtering-network idea; the quickstart's own scorer is made
this way). The seed is one of:

* a subset of the pool: a name (``subsets/NAME.npy``) or a uid ``.npy`` file (DataComp's format),
  resharded into ``filtered/NAME_seed/`` first;
* ``--seed-filter SPEC``: a filter spec (as ``poolsieve filter --spec``) made into that subset first;
* a folder of webdataset shards (``*.tar``), used as it is;
* a folder of image/caption pairs (``x.jpg`` + ``x.txt``, in subfolders too), written into shards
  under ``seeds/NAME/`` first.

The scorer trains with open_clip's training code at a scale of ``poolsieve train --list-scales``
(default ``tiny``: a 32 px CLIP, minutes on a laptop CPU) into ``runs/NAME/``; the command ends by
printing the ``--model`` to score the pool with::

    poolsieve train-scorer -w pool --seed subsets/clean.npy
    poolsieve score -w pool --model scorer=poolsieve-tiny:pool/runs/scorer/checkpoints/epoch_latest.pt

``--out FILE`` also writes the weights alone (a small, weights-only checkpoint). A finished scorer is
skipped on a rerun; a killed one resumes.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.formats import DIR_MODE, atomic_path, read_json, write_json
from poolsieve.core.models import read_checkpoint_state
from poolsieve.core.names import check_name
from poolsieve.core.owned_folders import check_owned, replace_owned
from poolsieve.core.progress import print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.stage import Stage, option
from poolsieve.core.untrusted_files import open_no_follow
from poolsieve.core.workspace import Workspace, shard_stats_path
from poolsieve.pipeline.filter.stage import FilterConfig, run_filter
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard, resolve_subset
from poolsieve.train.config import TrainConfig
from poolsieve.train.scales import SCALES
from poolsieve.train.trainer import train_clip

PAIR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # what open_clip's webdataset loader reads
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit: larger images are left out
MAX_CAPTION_CHARS = 10_000
PAIRS_PER_SHARD = 10_000
PAIRS_RECORD = "pairs.json"  # the record of a seed folder written from image/caption pairs


@dataclass
class ScorerConfig:
    """The ``train_scorer:`` section; each option is also a flag."""

    seed: str | None = option(None, "the seed data: a subset name, a uid .npy file, a folder of webdataset "
                                    "shards or a folder of image/caption pairs (x.jpg + x.txt)", metavar="SEED")
    seed_filter: str | None = option(None, "make the seed subset with this filter spec first (as "
                                           "`poolsieve filter --spec`; needs score tables)", metavar="SPEC")
    name: str = option("scorer", "the scorer's name: its run folder runs/NAME/ and its score column key")
    scale: str = option("tiny", "training scale (`poolsieve train --list-scales`)", choices=tuple(SCALES))
    samples_seen: int | None = option(None, "override the scale's budget of samples seen")
    batch_size: int | None = option(None, "override the scale's global batch size")
    lr: float | None = option(None, "override the scale's learning rate")
    model: str | None = option(None, "override the scale's open_clip architecture")
    random_seed: int = option(0, "random seed of the training")
    threads: int | None = option(None, "torch threads of the trainer (default: torch's choice)")
    workers: int = option(4, "data loader workers (DataComp's 4; fewer on a small machine)")
    out: str | None = option(None, "also write the scorer's weights alone to this file (.pt)", metavar="FILE")


def train_scorer(ws: Workspace, config: ScorerConfig, runtime: Runtime | None = None, *,
                 overwrite: bool = False) -> dict[str, Any]:
    """Seed data -> training shards -> a CLIP trained on them in ``runs/NAME/``; return the training
    summary plus ``seed`` (what it trained on) and ``score_model`` (the ``--model`` for ``score``)."""
    check_name(config.name, "scorer name")
    if config.out:
        _check_weights_file(Path(config.out).expanduser())  # before hours of training, not after
    train = TrainConfig(scale=config.scale, samples_seen=config.samples_seen, batch_size=config.batch_size,
                        lr=config.lr, model=config.model, seed=config.random_seed, threads=config.threads,
                        workers=config.workers)
    recipe = train.recipe()  # an unknown scale or a bad override stops here, before anything is read
    data, seed = seed_shards(ws, config, runtime, overwrite=overwrite)
    with ws.lock(f"runs/{config.name}"):
        summary = train_clip(data, ws.run_dir(config.name), train, overwrite=overwrite, name=config.name,
                             runtime=runtime, within=ws.root)
    checkpoint = Path(summary["checkpoint"])
    if config.out:
        checkpoint = export_weights(checkpoint, Path(config.out).expanduser())
    return dict(summary, seed=seed, weights=str(checkpoint),
                score_model=f"{config.name}={recipe.model}:{checkpoint}")


def seed_shards(ws: Workspace, config: ScorerConfig, runtime: Runtime | None, *,
                overwrite: bool = False) -> tuple[str, str]:
    """(the folder of training shards, a description of the seed) for ``config.seed`` / ``seed_filter``."""
    if config.seed_filter:
        if config.seed:
            raise ConfigError("train-scorer: give --seed or --seed-filter, not both")
        return _reshard(ws, _filter(ws, config, runtime, overwrite), config, runtime, overwrite)
    if not config.seed:
        raise ConfigError("train-scorer needs seed data: --seed SUBSET_OR_NPY_OR_FOLDER (or --seed-filter SPEC)")
    value = config.seed
    if value.endswith(".npy") or ("/" not in value and ws.subset_path(value).exists()):
        return _reshard(ws, value, config, runtime, overwrite)
    folder = Path(value).expanduser()
    if not folder.is_absolute() and (ws.root / folder).is_dir():
        folder = ws.root / folder
    if folder.is_dir():
        if any(p.suffix == ".tar" for p in folder.iterdir()):
            return str(folder), f"webdataset shards in {folder}"
        with ws.lock(f"seeds/{config.name}"):
            return write_pair_shards(folder, ws.seed_shards_dir(config.name), overwrite=overwrite, inside=ws.root)
    if "/" not in value:  # a subset name: its error names subsets/NAME.npy
        return _reshard(ws, value, config, runtime, overwrite)
    raise InputError(folder, "seed data not found: give a subset name, a uid .npy file or a folder")


def _filter(ws: Workspace, config: ScorerConfig, runtime: Runtime | None, overwrite: bool) -> str:
    """Make the seed subset from ``config.seed_filter``; return its name. A seed is meant to be a small clean
    sample: one under 10% of the pool is made without ``--allow-small``."""
    made = run_filter(ws, FilterConfig(spec=[config.seed_filter], name=f"{config.name}_seed", allow_small=True),
                      runtime or Runtime(executor="local"), overwrite=overwrite)
    if len(made) != 1:
        raise ConfigError(f"train-scorer: --seed-filter must make one subset, it makes {', '.join(made)}")
    name, result = next(iter(made.items()))
    if not result.get("count"):
        raise InputError(ws.subset_path(name), "the seed filter keeps no sample of the pool")
    return name


def _reshard(ws: Workspace, subset: str, config: ScorerConfig, runtime: Runtime | None,
             overwrite: bool) -> tuple[str, str]:
    """Copy a seed subset of the pool into ``filtered/NAME_seed/``."""
    out = f"{config.name}_seed"
    summary = reshard(ws, ReshardConfig(subset=subset, name=out), runtime or Runtime(executor="local"),
                      overwrite=overwrite)
    path = resolve_subset(ws, subset)
    samples = summary.get("output_count")
    if not samples:
        raise InputError(path, "none of the seed subset's uids is in the pool's shards")
    return str(ws.filtered_dir(out)), f"subset {path} ({samples} samples found in the pool)"


def write_pair_shards(folder: Path, out_dir: Path, *, overwrite: bool = False,
                      inside: Path | None = None) -> tuple[str, str]:
    """Image/caption pairs (``x.jpg`` + ``x.txt`` side by side, in subfolders too) as webdataset shards in
    ``out_dir``. Each image's header is checked (an image format, at most ``MAX_PIXELS``); pairs without
    a caption or with a bad image are left out and counted. Written once (``--overwrite`` rewrites), into
    a staging folder renamed into place whole; a folder already there is replaced only if it holds
    ``pairs.json`` (inside ``inside`` when given: ``core/owned_folders.py``)."""
    done = out_dir / PAIRS_RECORD
    if done.exists() and not overwrite:
        info = read_json(done)
        if info.get("source") == str(folder.resolve()):
            return str(out_dir), info["description"]
    check_owned(out_dir, (PAIRS_RECORD,), inside=inside, what="seed folder")  # before any work
    pairs, left_out = _read_pairs(folder)
    if not pairs:
        raise InputError(folder, "no image/caption pairs (x.jpg + x.txt) and no .tar shards in the seed folder")
    skipped = ", ".join(f"{n} {why}" for why, n in left_out.items() if n)
    description = f"{len(pairs)} image/caption pairs from {folder}" + (f" (left out: {skipped})" if skipped else "")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_pair_tars(pairs, staging)
        write_json(staging / PAIRS_RECORD, {"source": str(folder.resolve()), "pairs": len(pairs),
                                             "left_out": left_out, "description": description})
        os.chmod(staging, DIR_MODE)  # mkdtemp makes 0700
        replace_owned(staging, out_dir, (PAIRS_RECORD,), inside=inside, what="seed folder")
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return str(out_dir), description


def _read_pairs(folder: Path) -> tuple[list[tuple[bytes, str, str]], dict[str, int]]:
    """(image bytes, extension, caption) of every usable pair under ``folder``; what was left out, counted."""
    pairs, left_out = [], {"no caption": 0, "not an image": 0, "too large": 0}
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in PAIR_IMAGE_EXTENSIONS):
        if image.is_symlink() or not image.is_file():
            continue
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            left_out["no caption"] += 1
            continue
        data = image.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height, kind = im.width, im.height, (im.format or "").lower()
        except Exception:  # noqa: BLE001 - anything PIL cannot open is not an image
            left_out["not an image"] += 1
            continue
        if width * height > MAX_PIXELS:
            left_out["too large"] += 1
            continue
        caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()[:MAX_CAPTION_CHARS]
        ext = {"jpeg": "jpg", "mpo": "jpg"}.get(kind, kind)
        pairs.append((data, ext if ext in PAIR_IMAGE_EXTENSIONS else "jpg", caption))
    return pairs, left_out


def _write_pair_tars(pairs: list[tuple[bytes, str, str]], out_dir: Path) -> None:
    """``pairs`` as shards of ``PAIRS_PER_SHARD`` samples in ``out_dir``, each with its ``_stats.json``."""
    for start in range(0, len(pairs), PAIRS_PER_SHARD):
        path = out_dir / f"{start // PAIRS_PER_SHARD:08d}.tar"
        chunk = pairs[start:start + PAIRS_PER_SHARD]
        with tarfile.open(path, "w") as tar:
            for i, (data, ext, caption) in enumerate(chunk):
                key = f"{start + i:09d}"
                for member, payload in ((f"{key}.{ext}", data), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        write_json(shard_stats_path(path), {"successes": len(chunk)})


def export_weights(checkpoint: Path, out: Path) -> Path:
    """The weights of a training checkpoint alone (``{"state_dict": ...}``, loadable weights-only). A file
    already at ``out`` is replaced only if it is such a weights file (a previous export)."""
    import torch

    _check_weights_file(out)
    state = read_checkpoint_state(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state}, tmp)
    return out.resolve()


def _check_weights_file(out: Path) -> None:
    """``ConfigError`` in one line unless ``out`` is free or holds weights that ``export_weights`` wrote
    (a regular file, read weights-only: nothing in it runs)."""
    import torch

    if not os.path.lexists(out):
        return
    refused = ConfigError(f"{out}: exists and is not a scorer weights file poolsieve wrote; poolsieve replaces "
                          "only its own files: choose another --out or move it away")
    try:
        with os.fdopen(open_no_follow(out, os.O_RDONLY), "rb") as f:
            held = torch.load(f, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a symlink, a FIFO, not a checkpoint, or one that needs unpickling
        raise refused from None
    if not (isinstance(held, dict) and set(held) == {"state_dict"}):
        raise refused


def run(ws: Workspace, config: ScorerConfig, runtime: Runtime, *, overwrite: bool = False) -> dict[str, Any]:
    return train_scorer(ws, config, runtime, overwrite=overwrite)


def report(s: dict[str, Any]) -> None:
    """The one-screen summary, ending with the command that scores the pool with this scorer."""
    loss = s.get("final_loss")
    print_summary("train-scorer", [
        ("seed", s["seed"]),
        ("training", "skipped (finished before)" if s.get("skipped") else f"{s.get('seconds') or 0:.0f}s"),
        ("model", f"{s['model']} ({s['scale']} scale), {s['samples_seen']:,} samples seen"),
        ("final loss", "-" if loss is None else f"{loss:.3f}"),
        ("weights", s["weights"]),
        ("score with", f"poolsieve score --model {s['score_model']}"),
    ])


STAGE = Stage("train_scorer", ScorerConfig, run=run, report=report, reads=("subsets/", "shards/", "scores/"),
              writes=("filtered/", "seeds/", "runs/"))
