"""pyproject.toml gives setuptools nothing to warn about: ``pip install -e .`` prints no warning from our
own packaging files (issue 26, item 10).

setuptools (>= 77, what build isolation installs) warns when ``project.license`` is a table, and when a
folder inside a listed package holds files it ships ("Package 'poolsieve.core.model_configs' is absent
from the `packages` configuration"). Both rules are checked here on the file itself, without a network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_and_the_backend_reads_it() -> None:
    data = pyproject()
    assert isinstance(data["project"]["license"], str) and re.fullmatch(r"[A-Za-z0-9.\-+ ()]+", data["project"]["license"])
    requires = " ".join(data["build-system"]["requires"])
    found = re.search(r"setuptools>=(\d+)", requires)
    assert found and int(found.group(1)) >= 77, requires  # SPDX strings need setuptools 77


def folder_of(package: str, roots: dict[str, str]) -> Path:
    """The folder setuptools takes ``package`` from (its longest mapped parent in ``package-dir``)."""
    top = max((p for p in roots if package == p or package.startswith(p + ".")), key=len)
    return ROOT / roots[top] / Path(*package[len(top):].split(".")[1:])


def test_every_importable_folder_inside_a_package_is_listed() -> None:
    """Each folder below a mapped package's folder that Python could import (an identifier name, not a
    cache) is itself in ``packages``: none is left out with a warning; every listed package has its folder."""
    setuptools = pyproject()["tool"]["setuptools"]
    listed, roots = set(setuptools["packages"]), setuptools["package-dir"]
    missing = []
    for package, folder in roots.items():
        for path in sorted(p for p in (ROOT / folder).rglob("*") if p.is_dir()):
            parts = path.relative_to(ROOT / folder).parts
            if all(part.isidentifier() for part in parts) and "__pycache__" not in parts:
                missing += [name for name in [".".join((package, *parts))] if name not in listed]
    assert missing == []
    assert [name for name in listed if not folder_of(name, roots).is_dir()] == []


def test_package_data_names_listed_packages_and_files_that_exist() -> None:
    setuptools = pyproject()["tool"]["setuptools"]
    for package, patterns in setuptools["package-data"].items():
        assert package in setuptools["packages"], package
        folder = folder_of(package, setuptools["package-dir"])
        assert all(list(folder.glob(p)) for p in patterns), (package, patterns)
