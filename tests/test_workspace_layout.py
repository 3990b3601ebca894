"""The workspace's layout has one owner (core/workspace.py): every path a Workspace gives lies in one of
its LAYOUT entries, every stage reads and writes LAYOUT entries, and the README's tree shows them all."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from poolsieve.core.workspace import LAYOUT, Workspace
from poolsieve.pipeline.commands import COMMANDS

README = Path(__file__).resolve().parents[1] / "README.md"


def entry_of(ws: Workspace, path: Path) -> str:
    first = path.relative_to(ws.root).parts[0]
    return first if first in LAYOUT else first + "/"


def test_every_workspace_path_lies_in_a_layout_entry(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    paths = []
    for name, member in inspect.getmembers(Workspace):
        if isinstance(member, property):
            value = getattr(ws, name)
            if isinstance(value, Path) and name != "root":
                paths.append(value)
        elif inspect.isfunction(member) and name.endswith(("_dir", "_path")):
            paths.append(getattr(ws, name)("x"))
    assert len(paths) >= 20
    assert sorted({entry_of(ws, p) for p in paths} - set(LAYOUT)) == []


# commands with no STAGE's reads and writes: orchestration, the demo's pool, and fetch-assets (the pinned files'
# cache lies outside any workspace)
NO_STAGE = ("run", "quickstart", "generate", "fetch-assets")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.name not in NO_STAGE], ids=lambda c: c.name)
def test_stages_read_and_write_layout_entries(command) -> None:
    stage = command.hooks().stage
    assert stage.reads or stage.writes
    assert sorted(set(stage.reads + stage.writes) - set(LAYOUT)) == []


def test_readme_tree_shows_every_entry() -> None:
    text = README.read_text()
    tree = text[text.index("<workspace>/"):]
    tree = tree[:tree.index("```")]
    shown = {m.group(1) for m in re.finditer(r"^  (\S+?/|\S+\.json)", tree, flags=re.M)}
    assert sorted(set(LAYOUT) - shown) == [], "README's workspace tree misses these"
