"""The stage contract: what a stage declares, and the command line and YAML derived from it.

A stage is one step of the pipeline (download, score, filter, reshard, train, evaluate, ...). It
declares, once:

* ``name``: its section of a config file (its subcommand, one-line help and module are listed in
  ``pipeline/commands.py``);
* ``config``: a dataclass whose fields are the stage's options, each written once with ``option``
  (default, help, and how it shows on the command line). The YAML section ``<name>:`` takes the field
  names as keys; the CLI flags are derived from them (``samples_per_shard`` -> ``--samples-per-shard``);
* ``reads`` / ``writes``: the workspace folders it reads and writes (shown by ``poolsieve NAME --help``;
  each one a folder ``core/workspace.py`` names);
* ``run(workspace, config, runtime, *, overwrite=False) -> summary``: the work, unit by unit, through
  the runtime; the summary is a JSON-able dict;
* ``report(summary)``: prints the one-screen summary at the end of a command (optional);
* ``per_subset``: the config names one ``subset``; ``poolsieve run`` runs the stage once per subset.

```python
@dataclass
class ReshardConfig:
    subset: str | None = option(None, "subset name (subsets/NAME.npy) or a DataComp uid .npy file")
    shard_size: int = option(10_000, "samples per output shard (DataComp's)")

STAGE = Stage("reshard", ReshardConfig, reads=("shards/", "subsets/"), writes=("filtered/",), run=reshard,
              report=print_report)
```

``poolsieve <name>`` and ``poolsieve run`` both go through ``Stage.config_from``: a YAML section plus
the flags given on the command line (flags win), with unknown keys and mistyped values refused.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import build

NOT_ON_CLI = "cli"


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,  # noqa: A002
           short: str | None = None, metavar: str | None = None, choices: Sequence[Any] | None = None,
           aliases: Sequence[str] = (), cli: bool = True) -> Any:
    """A config field declared once: default, help text and command-line spelling.

    ``flag`` overrides the derived ``--field-name``; ``aliases`` adds other spellings (img2dataset's or
    DataComp's, e.g. ``--processes_count``); ``cli=False`` keeps an option YAML-only (nested specs).
    A mutable default (list, dict) is copied for every instance.
    """
    meta = {"help": help, "flag": flag, "short": short, "metavar": metavar,
            "choices": tuple(choices) if choices is not None else None, "aliases": tuple(aliases), NOT_ON_CLI: cli}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Stage:
    """One pipeline step: its name, its options, what it reads and writes, and how it runs."""

    name: str
    config: type
    run: Callable[..., dict[str, Any]]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    report: Callable[[dict[str, Any]], None] | None = None
    creates_workspace: bool = False  # the first stage of a pool may make the workspace folder
    per_subset: bool = False  # config has a ``subset`` field; ``poolsieve run`` runs it once per subset

    # ------------------------------------------------------------------ command line and YAML
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """One flag per option of ``config`` (those with ``cli=True``); a per-subset stage's ``--subset``
        repeats (the command runs once per subset, see ``configs_from``)."""
        add_config_arguments(parser, self.config, repeat=("subset",) if self.per_subset else ())

    def configs_from(self, section: dict[str, Any], args: argparse.Namespace) -> list[Any]:
        """One config per ``--subset`` given (a per-subset stage), else the one config."""
        subsets = getattr(args, "subset", None) if self.per_subset else None
        if isinstance(subsets, list) and subsets:
            return [self.config_from(section, args, subset=s) for s in subsets]
        return [self.config_from(section, args)]

    def config_from(self, section: dict[str, Any], args: argparse.Namespace | None = None,
                    **overrides: Any) -> Any:
        """The stage's config: the YAML ``section``, then flags given in ``args``, then ``overrides``."""
        given = cli_values(self.config, args) if args is not None else {}
        given.update({k: v for k, v in overrides.items() if v is not None})
        return build(self.config, section, self.name, given)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get(NOT_ON_CLI, True)]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether it is a list)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is list:
        inner = typing.get_args(hint)
        return (inner[0] if inner else str), True
    return hint, False


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _help_of(f: dataclasses.Field, base: Any) -> str:
    text = f.metadata.get("help", "")
    default = _default_of(f)
    if default not in (None, False, [], {}) and base is not bool:
        shown = ", ".join(map(str, default)) if isinstance(default, list) else default
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    return text.replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, repeat: Sequence[str] = ()) -> None:
    """Derive one flag per option: bools as ``--x/--no-x``, lists (and the fields in ``repeat``) repeatable,
    choices checked by argparse."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls):
        base, is_list = _base_type(hints.get(f.name, str))
        names = [flag_of(f), *f.metadata.get("aliases", ())]
        if f.metadata.get("short"):
            names.insert(0, f.metadata["short"])
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": _help_of(f, base)}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif is_list or f.name in repeat:
            kwargs.update(action="append", type=base if base in (int, float) else str)
        else:
            kwargs["type"] = base if base in (int, float) else str
        parser.add_argument(*names, **kwargs)


def cli_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (flags not given are absent)."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if getattr(args, f.name, None) is not None}
