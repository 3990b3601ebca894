"""The workspace: one folder per pool; every stage reads and writes only here.

This module owns its layout: every top-level entry (``LAYOUT``, drawn in the README's workspace tree),
the paths inside them that more than one module names, the shard layout ("a whole shard"), the
writer's locks and the paths stored relative to the root.
"""

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


# ------------------------------------------------------------------------------ the layout
# Every top-level entry of a workspace, and what makes it (a stage's ``reads``/``writes`` name these).
LAYOUT: dict[str, str] = {
    "metadata/": "the input pool: CommonPool metadata parquets (download, generate)",
    "shards/": "the downloaded webdataset shards, their failures and report (download)",
    "scores/": "one score table and one embeddings file per shard (score)",
    "references/": "embeddings of labelled reference image sets (score --reference)",
    "subsets/": "uid sets and their records (filter)",
    "filtered/": "one folder of training shards per resharded subset (reshard, train-scorer)",
    "seeds/": "image/caption seed pairs written into shards (train-scorer)",
    "runs/": "one folder per training run (train, train-scorer)",
    "evals/": "one folder per evaluated run (evaluate)",
    "report/": "the HTML report and its summary (inspect --html)",
    "submissions/": "submission folders (submit without --out)",
    "logs/": "one log per command: libraries' output kept off the terminal (every command)",
    ".hf_cache/": "the Hugging Face hub's cache of fetched metadata (download --scale)",
    "synthetic/": "the built-in pool's images, labels and evaluation sets (generate, quickstart)",
    "seed/": "the quickstart's clean seed set, apart from the pool (quickstart)",
    "quickstart.json": "the experiment the quickstart ran (quickstart)",
}


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
        """A path read from the workspace's files (``rel``'s output: relative inside it, absolute outside) on this
        machine."""
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

    @property
    def filtered_root(self) -> Path:
        return self.root / "filtered"

    @property
    def runs_root(self) -> Path:
        return self.root / "runs"

    @property
    def evals_root(self) -> Path:
        return self.root / "evals"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def hf_cache_dir(self) -> Path:
        """The Hugging Face hub's cache for metadata the download fetches."""
        return self.root / ".hf_cache"

    @property
    def synthetic_dir(self) -> Path:
        """The built-in pool's own files: images the image server serves, labels, evaluation sets."""
        return self.root / "synthetic"

    @property
    def labels_path(self) -> Path:
        """The built-in pool's truth per uid (its defect labels among them)."""
        return self.synthetic_dir / "labels.parquet"

    @property
    def quickstart_seed_dir(self) -> Path:
        return self.root / "seed"

    @property
    def quickstart_config_path(self) -> Path:
        return self.root / "quickstart.json"

    def filtered_dir(self, name: str) -> Path:
        return self.filtered_root / name

    def seed_shards_dir(self, name: str) -> Path:
        """Shards written from a folder of image/caption seed pairs for scorer ``name``."""
        return self.root / "seeds" / name

    def run_dir(self, name: str) -> Path:
        return self.runs_root / name

    def eval_dir(self, name: str) -> Path:
        return self.evals_root / name

    def submission_dir(self, name: str) -> Path:
        return self.root / "submissions" / name

    def log_path(self, command: str) -> Path:
        """``logs/<command>.log``."""
        return self.logs_dir / f"{command}.log"

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
