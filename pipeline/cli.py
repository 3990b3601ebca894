"""``poolsieve``: one subcommand per stage, plus ``run`` (a whole experiment) and ``quickstart``.

The commands and the hooks their modules declare are listed in ``pipeline/commands.py``; the parser
imports only the module of the command given (``poolsieve filter --help`` imports neither torch nor
Ray). A stage's flags are derived from its config and ``run_stage`` runs it. Every subcommand takes
``--workspace`` and ``--config``; stages run their units on Ray (a local Ray is started for the run
unless ``--ray-address`` names a cluster). A ``PoolsieveError`` ends the command
with a one-line reason on stderr and exit code 2, and so does an ``OSError`` the machine causes
(no space, read-only file system, permission denied).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

from poolsieve.core.config import load_config, section
from poolsieve.core.errors import ConfigError, PoolsieveError, PoolsieveWarning, user_os_error
from poolsieve.core.runtime import EXECUTORS, Runtime
from poolsieve.core.shown_text import for_terminal
from poolsieve.core.stage import Stage
from poolsieve.core.stage_log import capture
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import commands
from poolsieve.pipeline.commands import Hooks


@dataclass
class StageContext:
    """What every subcommand gets: the workspace path, the config, the runtime and common flags."""

    workspace_path: Path | None
    config: dict[str, Any]
    runtime: Runtime
    overwrite: bool = False

    def workspace(self, create: bool = False) -> Workspace:
        if self.workspace_path is None:
            raise ConfigError("no workspace: pass --workspace DIR (or set 'workspace:' in the config)")
        return Workspace.create(self.workspace_path) if create else Workspace.open(self.workspace_path)

    def section(self, name: str) -> dict[str, Any]:
        return section(self.config, name)


def add_common_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--workspace", "-w", type=Path, help="the pool's workspace folder")
    g.add_argument("--config", "-c", type=Path, help="YAML config; this stage reads its own section")
    g.add_argument("--ray-address", help="Ray cluster to join ('auto' on a cluster node); default: start a local Ray")
    g.add_argument("--executor", choices=EXECUTORS, help="run units as Ray tasks (default) or in this process (debugging)")
    g.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    g.add_argument("--overwrite", action="store_true", help="redo units that are already complete")


def add_command_arguments(p: argparse.ArgumentParser, hooks: Hooks) -> None:
    """The stage's option flags (from ``STAGE.config``), the module's CLI-only flags and the common ones."""
    if hooks.stage is not None:
        hooks.stage.add_arguments(p)
    if hooks.add_arguments is not None:
        hooks.add_arguments(p)
    add_common_options(p)


def stage_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand alone (its own flags plus the common ones), for library and test use."""
    p = SuggestingParser(prog=f"poolsieve {command}", description=commands.command(command).help)
    add_command_arguments(p, commands.command(command).hooks())
    return p


def run_stage(stage: Stage, ctx: StageContext, args: argparse.Namespace) -> int:
    """One stage as a command: its config section plus the flags, its run, its one-screen summary."""
    ws = ctx.workspace(create=stage.creates_workspace)
    for config in stage.configs_from(ctx.section(stage.name), args):  # a per-subset stage: once per --subset
        summary = stage.run(ws, config, ctx.runtime, overwrite=ctx.overwrite)
        if stage.report is not None:
            stage.report(summary)
    return 0


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors name the closest subcommand or option to a misspelt one."""

    def error(self, message: str) -> NoReturn:
        bad = re.search(r"invalid choice: '([^']+)'|unrecognized arguments: (\S+)", message)
        if bad:
            word = bad.group(1) or bad.group(2)
            choices = [c for a in self._actions for c in (a.choices or {} if a.nargs == argparse.PARSER else
                                                              a.option_strings)]
            close = difflib.get_close_matches(word.split("=")[0], choices, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]}?)"
        super().error(message)


def help_text(doc: str) -> str:
    """A module docstring as help: reST markup (``x``, :role:`x`) dropped, code fences unwrapped."""
    text = re.sub(r"^```\w*\n", "", doc, flags=re.M)
    text = re.sub(r":\w+:`([^`]*)`", r"\1", text)
    return text.replace("``", "").strip()


def description(name: str, hooks: Hooks) -> str:
    """A subcommand's ``--help`` text: its module docstring (``run``: all of it, with the experiment YAML;
    the others: the first paragraph), and for a stage the workspace folders it reads and writes."""
    doc = help_text(hooks.doc or commands.command(name).help)
    text = doc if name == "run" else doc.split("\n\n")[0]
    if hooks.stage is not None and (hooks.stage.reads or hooks.stage.writes):
        text += (f"\n\nworkspace folders it reads: {', '.join(hooks.stage.reads) or 'none'}; "
                 f"writes: {', '.join(hooks.stage.writes) or 'none'}")
    return text


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option (the top parser's options
    take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``poolsieve`` parser: every subcommand listed, only ``command``'s options built (its module
    is the only one imported)."""
    parser = SuggestingParser(
        prog="poolsieve",
        description="Curate image-text training data the DataComp way: download -> score once -> filter many "
        "ways -> reshard -> train -> evaluate -> submit.",
    )
    parser.add_argument("--version", action="version", version=f"poolsieve {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in commands.COMMANDS:
        if entry.name != command:
            sub.add_parser(entry.name, help=entry.help, add_help=False)
            continue
        hooks = entry.hooks()
        p = sub.add_parser(entry.name, help=entry.help, description=description(entry.name, hooks),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_command_arguments(p, hooks)
        p.set_defaults(_hooks=hooks)
    parser.stage_parsers = sub.choices  # type: ignore[attr-defined]
    return parser


def _version() -> str:
    try:
        return version("poolsieve")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def make_context(args: argparse.Namespace) -> StageContext:
    config = load_config(args.config)
    ws = args.workspace or config.get("workspace")
    if ws is not None and args.config is not None and args.workspace is None:
        ws = (args.config.parent / ws) if not Path(ws).is_absolute() else Path(ws)
    runtime = Runtime(
        executor=args.executor or config.get("executor") or "ray",
        address=args.ray_address or config.get("ray_address"),
        num_cpus=args.num_cpus,
    )
    return StageContext(Path(ws) if ws is not None else None, config, runtime, bool(args.overwrite))


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our own warnings as one line; library warnings as Python prints them."""
    if issubclass(category, PoolsieveWarning):
        return f"poolsieve: warning: {for_terminal(message)}\n"
    return _default_format_warning(message, category, filename, lineno, line)


_default_format_warning = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_of(argv)
    parser = build_parser(command if command in commands.BY_NAME else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's own parser names the closest of its options
        parser.stage_parsers.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return 0
    try:
        ctx = make_context(args)
        hooks: Hooks = args._hooks
        log = Workspace(ctx.workspace_path).log_path(args.command) if ctx.workspace_path is not None else None
        with capture(log, f"poolsieve {' '.join(argv)}"), ctx.runtime:
            if hooks.run_cli is not None:
                return int(hooks.run_cli(ctx, args) or 0)
            if hooks.cli_action is not None and (rc := hooks.cli_action(ctx, args)) is not None:
                return int(rc)  # a CLI-only action (--list-scales, --download DIR) that ends the command
            return run_stage(hooks.stage, ctx, args)
    except PoolsieveError as e:  # names and paths in it may come from someone else's workspace: escaped
        print(f"poolsieve {args.command}: error: {for_terminal(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # no space, read-only, permission: the machine's, not a bug; anything else keeps its traceback
        if (line := user_os_error(e)) is None:
            raise
        print(f"poolsieve {args.command}: error: {for_terminal(line)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"poolsieve {args.command}: interrupted; completed units are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
