"""The filter registry lists its modules explicitly: every module that registers a filter is listed."""

from __future__ import annotations

import re
from pathlib import Path

import poolsieve.filters as filters_pkg
from poolsieve.filters.registry import BUILTIN_FILTER_MODULES, FILTERS, load_builtin_filters


def test_every_registering_module_is_listed_and_nothing_else() -> None:
    folder = Path(filters_pkg.__file__).parent
    registering = {p.stem for p in folder.glob("*.py")
                   if p.stem != "registry" and re.search(r"^@register\(", p.read_text(), re.M)}
    assert registering == set(BUILTIN_FILTER_MODULES)


def test_load_builtin_filters_registers_each_module() -> None:
    load_builtin_filters()
    modules = {fn.__module__.rsplit(".", 1)[-1] for fn in FILTERS.values()}
    assert set(BUILTIN_FILTER_MODULES) <= modules
