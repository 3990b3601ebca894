"""Every ``poolsieve`` subcommand: where it lives, its one-line help, and the hooks its module declares.

``poolsieve --help`` lists the commands from this table without importing any of them, and
``poolsieve NAME ...`` imports only NAME's module. That module declares, as module-level names:

* ``STAGE`` (``core.stage.Stage``): the command is a stage; its flags derive from ``STAGE.config``
  and the CLI runs it (``pipeline.cli.run_stage``);
* ``add_arguments(parser)`` (optional): CLI-only flags (``--list-filters``, ``--list-scales``, ...);
* ``cli_action(ctx, args) -> int | None`` (optional, with ``STAGE``): acts on those flags before the
  stage runs; an int ends the command with that exit code;
* ``run_cli(ctx, args) -> int``: the whole command, in place of ``STAGE``, for a command that runs
  other stages in turn (``run``, ``quickstart``) or is no stage (``generate``).

A command that ``runs_stages`` is orchestration: it may import stages, and no stage may import it
(``tests/test_layering.py``). ``in_run`` marks the stages ``poolsieve run`` runs, in this order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from poolsieve.core.stage import Stage

HOOKS = ("STAGE", "add_arguments", "cli_action", "run_cli")


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, the module that declares it and its one-line help."""

    name: str
    module: str
    help: str
    runs_stages: bool = False  # orchestration: runs other stages (it may import them)
    in_run: bool = False  # a section of `poolsieve run`'s experiment file

    def hooks(self) -> Hooks:
        """Import the command's module (only now) and read its hooks."""
        return Hooks.of(self.name, importlib.import_module(self.module))


@dataclass(frozen=True)
class Hooks:
    """What a command's module declares (see the module docstring)."""

    doc: str
    stage: Stage | None
    add_arguments: Callable[[Any], None] | None
    cli_action: Callable[[Any, Any], int | None] | None
    run_cli: Callable[[Any, Any], int] | None

    @classmethod
    def of(cls, name: str, module: Any) -> Hooks:
        hooks = cls(module.__doc__ or "", *(getattr(module, hook, None) for hook in HOOKS))
        if (hooks.stage is None) == (hooks.run_cli is None):
            raise TypeError(f"command {name}: {module.__name__} must declare STAGE or run_cli (one of the two)")
        if hooks.cli_action is not None and hooks.stage is None:
            raise TypeError(f"command {name}: {module.__name__} declares cli_action without a STAGE")
        return hooks


COMMANDS: tuple[Command, ...] = (
    Command("generate", "poolsieve.pipeline.demo.synthetic_pool",
            "generate the built-in synthetic pool (metadata + image server files)"),
    Command("download", "poolsieve.pipeline.download.stage",
            "fetch the pool's images into webdataset shards with img2dataset", in_run=True),
    Command("score", "poolsieve.pipeline.score.stage", "CLIP scores and embeddings for every downloaded pair",
            in_run=True),
    Command("filter", "poolsieve.pipeline.filter.stage",
            "make uid subsets from the score tables with filters and set algebra", in_run=True),
    Command("reshard", "poolsieve.pipeline.reshard.stage", "copy a uid subset out of the pool into training shards",
            in_run=True),
    Command("train", "poolsieve.train.cli", "train a fixed-budget CLIP on a resharded subset with open_clip",
            in_run=True),
    Command("seed", "poolsieve.pipeline.seed",
            "make a seed subset for train-scorer from a uid list, a metadata column or filter, or a random draw",
            runs_stages=True),  # --where runs filter's evaluation
    Command("train-scorer", "poolsieve.pipeline.train_scorer",
            "train a CLIP scorer on your own seed data (for score, when no pretrained weights can be had)",
            runs_stages=True),
    Command("evaluate", "poolsieve.eval.cli", "zero-shot evaluation of a trained model", in_run=True),
    Command("inspect", "poolsieve.pipeline.inspect.stage", "summaries of a workspace: pool, scores, subsets, runs, evals"),
    Command("submit", "poolsieve.pipeline.submit", "validate a subset and write a DataComp submission folder"),
    Command("fetch-assets", "poolsieve.pipeline.fetch_assets",
            "fetch DataComp's pinned files (lid.176.bin, image_based's centroids and targets), sha256 checked"),
    Command("sql", "poolsieve.pipeline.sql", "SQL over the score tables and subsets with DuckDB (the [sql] extra)"),
    Command("run", "poolsieve.pipeline.experiment", "run a whole experiment from one YAML config", runs_stages=True),
    Command("quickstart", "poolsieve.pipeline.demo.quickstart", "end-to-end demo on the built-in pool (no network)",
            runs_stages=True),
)
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}
RUN_STAGES: tuple[str, ...] = tuple(c.name for c in COMMANDS if c.in_run)


def command(name: str) -> Command:
    return BY_NAME[name]


def stage(name: str) -> Stage:
    """The ``STAGE`` declared by the module of subcommand ``name`` (a stage: ``poolsieve run`` runs it)."""
    found = command(name).hooks().stage
    if found is None:
        raise TypeError(f"command {name} is not a stage")
    return found
