"""A small workspace made the quickstart's way, for the Python API and ``poolsieve sql`` tests.

Shards in img2dataset's layout (``factories``), scored by the real score stage with a tiny random CLIP
(in this process), then the quickstart's three subsets made by the real ``poolsieve filter`` command:
``no_filter``, ``basic`` and ``clip30`` (the top 30% by the scorer's column). The pool holds pairs that
``basic`` drops (tiny images, one-word and non-English captions), one image that does not decode, and
a caption written to break HTML and terminals.

``shared(tmp_path_factory)`` builds it once per test session; tests that write into a workspace take a
``copy`` of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from factories import make_samples, write_img2dataset_shards

from poolsieve.core.workspace import Workspace

KEY = "poolsieve_tiny"
COLUMN = f"clip_{KEY}_similarity_score"
SPECS = {"no_filter": "no_filter", "basic": "basic", "clip30": f"clip_score(column={COLUMN}, fraction=0.3)"}
HOSTILE_CAPTION = 'a red circle <script>alert("x")</script> & \x1b[31mred\x1b[0m on a white background'
FOREIGN = ["un cercle rouge sur un fond blanc avec une ombre", "ein blaues Quadrat auf einem weißen Hintergrund",
           "un triángulo verde sobre un fondo blanco y limpio"]
NUM_SHARDS, PER_SHARD = 3, 40
BROKEN = 7  # the sample whose JPEG is cut in half


def save_tiny_checkpoint(path: Path) -> Path:
    import open_clip
    import torch

    from poolsieve.core.models import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    torch.save({"state_dict": open_clip.create_model("poolsieve-tiny").state_dict()}, path)
    return path


def filter_argv(root: Path, specs: dict[str, str]) -> list[str]:
    """``poolsieve filter`` making ``specs`` (name -> expression) in this process."""
    argv = ["filter", "-w", str(root), "--executor", "local"]
    for name, spec in specs.items():
        argv += ["--spec", f"{name} = {spec}"]
    return argv


def build(root: Path) -> Workspace:
    """Shards -> ``score`` -> ``poolsieve filter`` with the quickstart's specs; returns the workspace."""
    from poolsieve.core.runtime import Runtime
    from poolsieve.pipeline import cli
    from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

    samples = make_samples(NUM_SHARDS * PER_SHARD, seed=5, image_size=48)
    for i, s in enumerate(samples):
        if i % 10 == 1:
            s.original_width = 64  # too small for basic
        elif i % 10 == 2:
            s.caption = FOREIGN[i % 3]
        elif i % 10 == 3:
            s.caption = "ok"
    samples[4].caption = HOSTILE_CAPTION
    samples[BROKEN].jpeg = samples[BROKEN].jpeg[: len(samples[BROKEN].jpeg) // 2]
    ws = Workspace.create(root)
    write_img2dataset_shards(ws.shards_dir, samples, per_shard=PER_SHARD)
    checkpoint = save_tiny_checkpoint(root.parent / f"{root.name}-tiny.pt")
    score_pool(ws, ScoreConfig(models=[f"poolsieve-tiny:{checkpoint}"], chunk_size=16), Runtime(executor="local"),
               quiet=True)
    assert cli.main(filter_argv(ws.root, SPECS)) == 0
    (root / "built").write_text("ok")  # a finished build (the marker the next test module looks for)
    return ws


def shared(tmp_path_factory) -> Workspace:
    """The session's one built workspace (read only: ``copy`` it before writing)."""
    root = tmp_path_factory.getbasetemp() / "api-quickstart-like"
    if (root / "built").exists():
        return Workspace.open(root)
    shutil.rmtree(root, ignore_errors=True)
    return build(root)


def copy(ws: Workspace, dest: Path) -> Workspace:
    shutil.copytree(ws.root, dest, symlinks=True)
    return Workspace.open(dest)
