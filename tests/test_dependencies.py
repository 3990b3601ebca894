"""Every third-party module the package imports is a declared dependency (pyproject), and pip agrees."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {normalise(re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0]) for d in deps}


def imported_top_levels() -> dict[str, str]:
    """Top-level third-party module -> first file importing it, over the installed packages' sources."""
    found: dict[str, str] = {}
    for folder in ("core", "pipeline", "filters", "train", "eval", "api"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    top = name.split(".")[0]
                    if top != "poolsieve" and top not in sys.stdlib_module_names:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    providers = packages_distributions()
    wanted = declared()
    missing = []
    for module, where in sorted(imported_top_levels().items()):
        dists = {normalise(d) for d in providers.get(module, [])}
        if not dists & wanted:
            missing.append(f"{module} (from {sorted(dists) or 'no installed distribution'}), imported in {where}")
    assert not missing, "undeclared imports:\n" + "\n".join(missing)


@pytest.mark.subprocess
def test_pip_check_is_clean() -> None:
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
