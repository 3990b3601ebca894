"""The filter registry lists its modules explicitly: every module that registers a filter is listed.
A filter's parameters are written once, in a signature: spec checks, ``--list-filters`` and the
modules' parameter tables all agree with it."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

import poolsieve.filters as filters_pkg
from poolsieve.core.errors import ConfigError
from poolsieve.core.uids import UidSet
from poolsieve.filters.registry import (
    BUILTIN_FILTER_MODULES,
    FILTERS,
    PARAMETERS_OF,
    check_parameters,
    describe_filters,
    filter_parameters,
    load_builtin_filters,
    register,
)


def test_every_registering_module_is_listed_and_nothing_else() -> None:
    folder = Path(filters_pkg.__file__).parent
    registering = {p.stem for p in folder.glob("*.py")
                   if p.stem != "registry" and re.search(r"^@register\(", p.read_text(), re.M)}
    assert registering == set(BUILTIN_FILTER_MODULES)


def test_load_builtin_filters_registers_each_module() -> None:
    load_builtin_filters()
    modules = {fn.__module__.rsplit(".", 1)[-1] for fn in FILTERS.values()}
    assert set(BUILTIN_FILTER_MODULES) <= modules


EMBEDDING_FILTERS = {"d2_pruning": "d2_run", "semdedup": "semdedup_run", "image_based": "image_based_run"}


@pytest.mark.parametrize(("name", "run"), EMBEDDING_FILTERS.items())
def test_embedding_filter_parameters_are_their_run_functions(name, run):
    load_builtin_filters()
    module = importlib.import_module(f"poolsieve.filters.{name}")
    named, takes_any = filter_parameters(name)
    expected = [p for p in inspect.signature(getattr(module, run)).parameters.values() if p.name != "pool"]
    assert [(p.name, p.default) for p in named] == [(p.name, p.default) for p in expected]
    assert not takes_any


def test_spec_typo_is_refused_naming_the_parameters():
    with pytest.raises(ConfigError, match=r"'d2_pruning' has no parameter fractoin; it takes fraction, count, .*knn_impl"):
        check_parameters("d2_pruning", {"fractoin": 0.3})
    check_parameters("d2_pruning", {"fraction": 0.3, "k": 4})
    check_parameters("dedup", {"method": "semantic", "eps": 0.1})  # **params: dedup checks them itself


def test_list_shows_parameters_and_defaults_from_the_signature():
    def shown(name: str) -> str:
        text = describe_filters()
        block = re.search(rf"^{name} .*\n((?: {{21}}.*\n?)+)", text, flags=re.M)
        return " ".join(block.group(1).split()) if block else ""

    assert "k=5" in shown("d2_pruning") and "score_shift=0.115" in shown("d2_pruning")
    assert "threshold=0.28" in shown("laion2b") and shown("no_filter") == "(no parameters)"

    @register("test_only_filter")
    def test_only_filter(pool, *, alpha: float = 0.25, beta=None, report=None) -> UidSet:
        """Test filter."""
        return UidSet()

    try:
        assert shown("test_only_filter") == "(alpha=0.25, beta=None)"
    finally:
        FILTERS.pop("test_only_filter")
        PARAMETERS_OF.pop("test_only_filter")


def _table_rows(doc: str) -> list[tuple[list[str], list[str]]]:
    """``(names, defaults)`` of each row of a ``| param | default | meaning |`` table."""
    rows = []
    for line in doc.split("| param | default | meaning |", 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append(([n.strip() for n in cells[0].split("/")], [d.strip(" `") for d in cells[1].split(" / ")]))
    return rows


@pytest.mark.parametrize("name", ["d2_pruning", "semdedup", "image_based", "dedup"])
def test_parameter_tables_agree_with_the_signature(name):
    load_builtin_filters()
    module = importlib.import_module(f"poolsieve.filters.{name}")
    named = {p.name: p.default for p in filter_parameters(name)[0]}
    listed = set()
    for names, defaults in _table_rows(module.__doc__):
        for i, param in enumerate(names):
            assert param in named, f"{name}'s table names {param}, which the filter does not take"
            listed.add(param)
            default = named[param]
            if default is not None and i < len(defaults):  # None: the table says what it means
                written = yaml.safe_load(defaults[i].replace("_", ""))
                assert written == (list(default) if isinstance(default, tuple) else default), (name, param)
    assert listed == set(named), f"{name}'s table lacks {sorted(set(named) - listed)}"
