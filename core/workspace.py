"""The workspace: one folder per pool; every stage reads and writes only here (see DESIGN.md)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .formats import metadata_files
from .locks import exclusive

# ------------------------------------------------------------------------------ the shard layout
# A shard is ``NAME.tar`` (+ ``NAME.parquet``) and ``NAME_stats.json``; the stats file is written last,
# so a shard is whole exactly when its tar and its stats file are both there. Pool shards are
# ``shards/{:05d}``, resharded and seed-set shards ``{:08d}``.
SHARD_STATS_SUFFIX = "_stats.json"


def shard_stats_path(shard_file: Path) -> Path:
    """The ``_stats.json`` of the shard that ``shard_file`` (its .tar or .parquet) belongs to."""
    return shard_file.with_name(f"{shard_file.stem}{SHARD_STATS_SUFFIX}")


def is_whole_shard(tar: Path) -> bool:
    return tar.exists() and shard_stats_path(tar).exists()


def whole_shard_tars(folder: Path) -> list[Path]:
    """The whole shards of ``folder``, sorted by name (none when the folder does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.tar") if shard_stats_path(p).exists())


@dataclass(frozen=True)
class Workspace:
    """Paths of one pool's workspace. ``Workspace.open`` checks it exists; ``create`` makes it."""

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> Workspace:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError(root, "workspace does not exist (create it with `poolsieve download` or `poolsieve quickstart`)")
        return cls(root.resolve())

    @classmethod
    def create(cls, root: str | Path) -> Workspace:
        root = Path(root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root.resolve())

    # ---- the writer's lock
    @contextlib.contextmanager
    def lock(self, what: str, wait: float = 0.0) -> Iterator[Path]:
        """Hold the writer's lock of ``what`` (``"scores"``, ``"subsets/NAME"``, ``"filtered/NAME"``, ...):
        one process at a time writes it; another fails at once in one line (see ``core/locks.py``)."""
        parts = Path(what).parts
        if not parts or Path(what).is_absolute() or any(p in ("..", ".") for p in parts):
            raise InputError(self.root / what, "not a folder inside the workspace")
        with exclusive(self.root / what, wait) as path:
            yield path

    # ---- paths stored in the workspace's own files (summaries, records, fingerprints)
    def rel(self, path: str | Path) -> str:
        """``path`` as the workspace stores it: relative to the root (``/``-separated) when it lies inside,
        else absolute. Stored this way, a workspace copied or mounted elsewhere keeps its records valid."""
        given = Path(path).expanduser()
        for candidate in (Path(os.path.abspath(given)), given.resolve()):
            if candidate.is_relative_to(self.root):
                return candidate.relative_to(self.root).as_posix() or "."
        return str(Path(os.path.abspath(given)))

    def abs(self, stored: str | Path) -> Path:
        """A path read from the workspace's files (``rel``'s output, or an older absolute one) on this machine."""
        path = Path(stored).expanduser()
        return path if path.is_absolute() else self.root / path

    # ---- folders
    @property
    def metadata_dir(self) -> Path:
        return self.root / "metadata"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"

    @property
    def subsets_dir(self) -> Path:
        return self.root / "subsets"

    @property
    def references_dir(self) -> Path:
        return self.root / "references"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def filtered_dir(self, name: str) -> Path:
        return self.root / "filtered" / name

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def eval_dir(self, name: str) -> Path:
        return self.root / "evals" / name

    # ---- files
    def subset_path(self, name: str) -> Path:
        return self.subsets_dir / f"{name}.npy"

    def subset_info_path(self, name: str) -> Path:
        return self.subsets_dir / f"{name}.json"

    def reference_path(self, name: str) -> Path:
        """Embeddings of a labelled reference image set (the image-based filter's target)."""
        return self.references_dir / f"{name}.npz"

    def score_table_path(self, shard: str) -> Path:
        return self.scores_dir / f"{shard}.parquet"

    def embeddings_path(self, shard: str) -> Path:
        return self.scores_dir / f"{shard}.npz"

    # ---- listings
    def metadata_files(self) -> list[Path]:
        return metadata_files(self.metadata_dir)

    def shard_tars(self) -> list[Path]:
        """Pool shards (``shards/{:05d}.tar``) that are whole: their ``_stats.json`` exists."""
        if not self.shards_dir.is_dir():
            raise InputError(self.shards_dir, "no downloaded shards (run `poolsieve download` first)")
        return whole_shard_tars(self.shards_dir)

    def score_tables(self) -> list[Path]:
        if not self.scores_dir.is_dir():
            raise InputError(self.scores_dir, "no score tables (run `poolsieve score` first)")
        files = sorted(p for p in self.scores_dir.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise InputError(self.scores_dir, "no score tables (run `poolsieve score` first)")
        return files
