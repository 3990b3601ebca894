"""Dependencies point one way: CLI / orchestration -> stages -> filters, train, eval -> core.

Read from the source with ``ast`` (imports inside functions count too): core imports no other poolsieve
package; the libraries (filters, train, eval) import core and themselves, never a stage or each other;
the stage modules of train and eval (their ``cli.py``) may use the other libraries; nothing but the
orchestration and the demo imports the demo; the Python API (api/) sits beside the stages and nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"core": "core", "pipeline": "pipeline", "filters": "filters", "train": "train", "eval": "eval",
            "api": "api"}
STAGE_MODULES = {"train/cli.py", "eval/cli.py"}


def poolsieve_imports(path: Path) -> set[str]:
    """The ``poolsieve.X.Y`` modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT).with_suffix("")
    package = ["poolsieve", *rel.parts[:-1]]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("poolsieve."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("poolsieve."):
                found.add(name)
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[1] == "pipeline" and len(parts) > 2 and parts[2] == "demo":
        return "demo"
    return parts[1]


ALLOWED = {
    "core": {"core"},
    "filters": {"core", "filters"},
    "train": {"core", "train"},
    "eval": {"core", "eval"},
}


@pytest.mark.parametrize("folder", ["core", "filters", "train", "eval"])
def test_libraries_import_only_below_them(folder: str) -> None:
    bad = []
    for path in files(folder):
        rel = str(path.relative_to(ROOT))
        allowed = ALLOWED[folder] | ({"filters", "train", "eval"} if rel in STAGE_MODULES else set())
        for module in poolsieve_imports(path):
            if layer_of(module) not in allowed:
                bad.append(f"{rel} imports {module}")
    assert not bad, "\n".join(bad)


def test_only_orchestration_uses_the_demo() -> None:
    users = {str(p.relative_to(ROOT)) for folder in PACKAGES for p in files(folder)
             if any(layer_of(m) == "demo" for m in poolsieve_imports(p))}
    assert {u for u in users if not u.startswith(("pipeline/demo/", "pipeline/cli.py"))} == set()


def test_nothing_imports_the_api() -> None:
    users = {str(p.relative_to(ROOT)) for folder in PACKAGES for p in files(folder)
             if any(layer_of(m) == "api" for m in poolsieve_imports(p))}
    assert {u for u in users if not u.startswith("api/")} == set()
