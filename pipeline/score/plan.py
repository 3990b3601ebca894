"""What a score run does before any work: which models each shard needs, and how the run uses the cluster.

``plan_jobs`` reads each shard's score table (its score columns, embeddings and the models it records)
and groups the shards that need the same models into one ``ScoreJob``; ``plan_resources`` sizes the
encoder workers and reader tasks for the CPUs and GPUs a cluster has.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from poolsieve.core.errors import ConfigError, InputError, PoolsieveWarning
from poolsieve.core.formats import MODELS_METADATA, embedding_keys, score_column
from poolsieve.core.untrusted_files import open_regular
from poolsieve.core.workspace import Workspace

_SCORE_COLUMN = re.compile(r"^clip_(.+)_similarity_score$")


# --------------------------------------------------------------------------- the tables' state
def scored_keys(ws: Workspace, shard: str) -> set[str] | None:
    """The model keys a shard's score table holds (score column and both embeddings), or None when it has
    no whole table (the npz is written before the parquet, so a parquet means a whole pair)."""
    table, npz = ws.score_table_path(shard), ws.embeddings_path(shard)
    if not (table.exists() and npz.exists()):
        return None
    try:
        with open_regular(table) as f:
            names = pq.read_schema(f).names
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is named
        raise InputError(table, f"not a readable score table ({e}); remove it or rerun with --overwrite") from None
    try:
        with open_regular(npz) as f, np.load(f, allow_pickle=False) as z:
            arrays = set(z.files)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(npz, f"not a readable .npz file ({e}); remove it or rerun with --overwrite") from None
    keys = {m.group(1) for name in names if (m := _SCORE_COLUMN.match(name))}
    return {k for k in keys if set(embedding_keys(k)) <= arrays}


def model_record(ws: Workspace, entry: Any) -> str:
    """How a score table records the model of a key: ``ARCH[:TAG|CHECKPOINT]``, a checkpoint inside the
    workspace relative to it (so a copied workspace records the same model)."""
    pretrained = entry.spec.pretrained
    if pretrained and entry.spec.is_local_checkpoint:
        pretrained = ws.rel(pretrained)
    return entry.spec.arch + (f":{pretrained}" if pretrained else "")


def recorded_models(ws: Workspace, shard: str) -> dict[str, str]:
    """The models a shard's score table records for its keys (none for tables written before records)."""
    with open_regular(ws.score_table_path(shard)) as f:
        meta = pq.read_schema(f).metadata or {}
    try:
        records = json.loads(meta.get(MODELS_METADATA, b"{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in records.items()} if isinstance(records, dict) else {}


# ------------------------------------------------------------------------------------- jobs
@dataclass
class ScoreJob:
    """Shards that need the same models: new tables (``adding`` False) or columns added to scored ones."""

    models: list[Any]
    tars: list[Path]
    adding: bool = False


def plan_jobs(ws: Workspace, tars: Sequence[Path], models: Sequence[Any], overwrite: bool) -> list[ScoreJob]:
    """What each shard needs: every model (no table yet, or ``overwrite``), the models its table lacks, or
    nothing; shards that need the same are one job. A key whose columns another model made is kept, with
    a warning."""
    jobs: dict[tuple[bool, tuple[str, ...]], ScoreJob] = {}
    others: dict[str, tuple[str, int]] = {}  # key -> (the model that made its columns, shards)
    for t in tars:
        present = None if overwrite else scored_keys(ws, t.stem)
        missing = [m for m in models if present is None or m.key not in present]
        kept = [m for m in models if m not in missing]
        if kept:
            records = recorded_models(ws, t.stem)
            for m in kept:
                made_by = records.get(m.key)
                if made_by is not None and made_by != model_record(ws, m):
                    others[m.key] = (made_by, others.get(m.key, ("", 0))[1] + 1)
        if not missing:
            continue
        adding = present is not None
        job = jobs.setdefault((adding, tuple(m.key for m in missing)), ScoreJob(missing, [], adding))
        job.tars.append(t)
    for key, (made_by, shards) in others.items():
        asked = next(model_record(ws, m) for m in models if m.key == key)
        warnings.warn(f"{score_column(key)} of {shards} shard(s) was made by {made_by}, not by {asked} named now: "
                      f"kept as it is (name the new model with a key of its own, KEY={asked}, or pass --overwrite "
                      "to score anew)", PoolsieveWarning, stacklevel=3)
    return list(jobs.values())


# -------------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class Resources:
    """How a score run uses the cluster: encoder workers and reader tasks, and the CPUs each reserves."""

    encoders: int
    device: str
    encoder_cpus: float
    readers: int
    reader_cpus: float
    cpus: float
    use_gpu: bool


def plan_resources(config: Any, resources: dict[str, float], where: str = "this machine") -> Resources:
    """Encoders (one per GPU, else one) and readers (the CPUs the encoders leave free) for a cluster with
    ``resources`` (Ray's ``{"CPU": n, "GPU": m}``); ``config`` is a ``ScoreConfig``.

    Every CPU count runs: when the encoders would leave no whole CPU to a reader (``--num-cpus 1``, or
    as many GPUs as CPUs), encoders and readers share the CPUs in fractions (rounded down, so that they
    all fit) instead of waiting for each other forever."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1)) or 1.0
    use_gpu = config.device.startswith("cuda") or (config.device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise ConfigError(f"score: device cuda asked for, but {where} has no GPU")
    n_enc = config.encoders or (gpus if use_gpu else 1)
    device = ("cuda" if use_gpu else "cpu") if config.device == "auto" else config.device
    enc_cpus = 1.0 if not use_gpu else float(min(2, max(1, int(cpus) // max(1, n_enc) // 4)))
    free = cpus - n_enc * enc_cpus
    readers = config.decode_workers or max(1, int(free))
    reader_cpus = 1.0
    if free < 1:
        enc_cpus = math.floor(cpus / 2 / n_enc * 1e4) / 1e4  # Ray counts CPUs in units of 1/10,000
        reader_cpus = math.floor(cpus / 2 / readers * 1e4) / 1e4
    return Resources(n_enc, device, enc_cpus, readers, reader_cpus, cpus, use_gpu)
