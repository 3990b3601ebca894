"""Evaluating specs: filters, subsets and their set algebra (and, or, not) over one scored pool.

``Evaluator`` turns parsed spec nodes (``filters.spec``) into uid sets. Each distinct filter call is
run once per evaluator, however many subsets use it; every node evaluated is recorded as a step with
its count and time, and ``and`` / ``or`` record the running count after each operand.

A filter call that keeps under ``FEW_KEPT`` of the pool (``registry.py``) is handled by the evaluator's
``small`` policy: ``warn`` (the default: a ``PoolsieveWarning``, and the step's ``details`` keep it),
``refuse`` (``KeepsTooLittle``, unless the call says ``allow_small=true`` or asks for its size with
``fraction`` or ``count``: ``poolsieve filter``'s choice) or ``record`` (the details only: a dry run
prints them).
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from poolsieve.core.errors import ConfigError, InputError, PoolsieveWarning
from poolsieve.core.formats import file_sha256, read_uidset
from poolsieve.core.uids import UidSet

from .no_filter import no_filter
from .registry import (
    ALLOW_SMALL,
    FILTERS,
    ScoredPool,
    check_parameters,
    few_kept_hint,
    few_kept_warning,
    get_filter,
    kept_share,
    load_builtin_filters,
)
from .spec import Node, parse_spec, render

SMALL_POLICIES = ("warn", "refuse", "record")
SIZE_PARAMETERS = ("fraction", "count")  # a call giving one asks for its size: a small one is what was asked


class KeepsTooLittle(ConfigError):
    """A filter call kept under ``FEW_KEPT`` of the pool, unconfirmed, under the ``refuse`` policy."""


def is_filter(name: str) -> bool:
    load_builtin_filters()
    return name in FILTERS


def confirms_small(params: Mapping[str, Any]) -> bool:
    """Whether a filter call's parameters confirm that it may keep little: ``allow_small: true`` (checked: a
    boolean), or a size the call asks for itself (``SIZE_PARAMETERS``: ``clip_score(fraction=0.05)``)."""
    allowed = params.get(ALLOW_SMALL, False)
    if not isinstance(allowed, bool):
        raise ConfigError(f"{ALLOW_SMALL} takes true or false, got {allowed!r}")
    return allowed or any(params.get(k) is not None for k in SIZE_PARAMETERS)


def call_filter(pool: ScoredPool, name: str, params: Mapping[str, Any], details: dict,
                small: str = "warn") -> UidSet:
    """Run a registered filter with checked parameters; return its uid set. A result under ``FEW_KEPT``
    of the pool goes to ``details["warning"]`` and is handled by the ``small`` policy (module docstring)."""
    fn = get_filter(name)
    allowed = confirms_small(params)
    kwargs = {k: v for k, v in params.items() if k != ALLOW_SMALL}
    check_parameters(name, kwargs)
    given = dict(kwargs)
    if "report" in inspect.signature(fn).parameters:
        kwargs["report"] = details
    result = fn(pool, **kwargs)
    if not isinstance(result, UidSet):
        raise ConfigError(f"filter '{name}' returned {type(result).__name__}, expected a UidSet")
    warning = few_kept_warning(name, given, len(result), pool.member_count())
    if warning:
        details["warning"] = warning
        if allowed:
            details[ALLOW_SMALL] = True
        if small == "refuse" and not allowed:
            raise KeepsTooLittle(f"filter '{name}' would keep {kept_share(len(result), pool.member_count())}: "
                                 f"{few_kept_hint(name, given)}")
        if small != "record":
            warnings.warn(warning, PoolsieveWarning, stacklevel=2)
    return result


class Evaluator:
    """Evaluates specs over ``pool``.

    ``definitions`` maps subset names of the current spec document to their (raw or parsed) specs;
    ``subset_file(name)`` gives the path of a saved subset; ``load_defined(name)`` may return the
    uids of a defined subset that is already saved and up to date (so it is not recomputed);
    ``small`` is the policy for a filter call that keeps little (module docstring).
    """

    def __init__(self, pool: ScoredPool, definitions: Mapping[str, Any] | None = None,
                 subset_file: Callable[[str], Path] | None = None,
                 load_defined: Callable[[str], UidSet | None] | None = None, small: str = "warn"):
        if small not in SMALL_POLICIES:
            raise ValueError(f"small must be one of {SMALL_POLICIES}, got {small!r}")
        self.pool = pool
        self.small = small
        self.definitions = {k: parse_spec(v, k) for k, v in (definitions or {}).items()}
        self.subset_file = subset_file
        self.load_defined = load_defined
        self._cache: dict[str, tuple[UidSet, dict[str, Any]]] = {}
        self._pool_uids: UidSet | None = None
        self._active: list[str] = []
        self.steps: list[dict[str, Any]] = []
        self.inputs: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ public
    def pool_uids(self) -> UidSet:
        """Every member of the pool (what ``not`` complements against)."""
        if self._pool_uids is None:
            self._pool_uids = no_filter(self.pool)
        return self._pool_uids

    def resolve(self, node: Node, within: str | None = None) -> Node:
        """Replace bare names by what they refer to (defined subset, filter, or subset file).

        Inside the definition of ``within`` its own name means the filter or file (``basic: basic``).
        """
        if "ref" in node:
            name = node["ref"]
            if name in self.definitions and name != within:
                return {"subset": name}
            if is_filter(name):
                return {"filter": name, "params": {}}
            if self.subset_file is not None and self.subset_file(name).exists():
                return {"subset": name}
            defined = f"; subsets defined here: {', '.join(sorted(self.definitions))}" if self.definitions else ""
            raise ConfigError(f"'{name}' is neither a filter nor a subset (no subsets/{name}.npy); "
                              f"filters: {', '.join(sorted(FILTERS))}{defined}")
        out = dict(node)
        for key in ("and", "or"):
            if key in node:
                out[key] = [self.resolve(p, within) for p in node[key]]
        if "not" in node:
            out["not"] = self.resolve(node["not"], within)
        return out

    def evaluate(self, node: Node, within: str | None = None) -> UidSet:
        """The uid set of a (parsed) spec node."""
        return self._eval(self.resolve(node, within))

    def evaluate_defined(self, name: str) -> UidSet:
        if name not in self.definitions:
            raise ConfigError(f"no subset named '{name}' in the spec")
        return self._subset(name)

    # ------------------------------------------------------------------ internals
    def _eval(self, node: Node) -> UidSet:
        key = json.dumps(node, sort_keys=True, default=str)
        if key in self._cache:
            keys, done = self._cache[key]
            self.steps.append({**done, "seconds": 0.0, "reused": True})
            return keys
        start = time.perf_counter()
        step: dict[str, Any] = {"step": render(node)}
        if "filter" in node:
            details: dict[str, Any] = {}
            keys = call_filter(self.pool, node["filter"], node.get("params") or {}, details, self.small)
            if details:
                step["details"] = details
        elif "subset" in node:
            keys = self._subset(node["subset"])
        elif "not" in node:
            inner = self._eval(node["not"])
            keys = self.pool_uids() - inner
            step.update(op="not", counts=[len(self.pool_uids()), len(keys)])
        else:
            op = "and" if "and" in node else "or"
            parts = [self._eval(p) for p in node[op]]
            keys, running = parts[0], [len(parts[0])]
            for part in parts[1:]:
                keys = keys & part if op == "and" else keys | part
                running.append(len(keys))
            step.update(op=op, counts=running)
        step["count"] = len(keys)
        step["seconds"] = round(time.perf_counter() - start, 3)
        self.steps.append(step)
        self._cache[key] = (keys, step)
        return keys

    def _subset(self, name: str) -> UidSet:
        if name in self.definitions:
            if name in self._active:
                cycle = " -> ".join([*self._active[self._active.index(name):], name])
                raise ConfigError(f"subset definitions refer to each other in a cycle: {cycle}")
            saved = self.load_defined(name) if self.load_defined is not None else None
            if saved is not None:
                self.inputs.append({"subset": name, "up_to_date": True})
                return saved
            self._active.append(name)
            try:
                return self.evaluate(self.definitions[name], within=name)
            finally:
                self._active.pop()
        if self.subset_file is None:
            raise ConfigError(f"subset '{name}' is not defined here and there is no workspace to load it from")
        path = self.subset_file(name)
        if not path.exists():
            raise InputError(path, f"subset '{name}' does not exist (make it with `poolsieve filter`)")
        saved = read_uidset(path)
        keys = saved & self.pool_uids()  # a subset of another pool contributes only this pool's uids
        self.inputs.append({"subset": name, "path": str(path), "sha256": file_sha256(path), "count": len(saved),
                            "outside_pool": len(saved) - len(keys)})
        return keys


def evaluate_spec(pool: ScoredPool, spec: Any, definitions: Mapping[str, Any] | None = None,
                  subset_file: Callable[[str], Path] | None = None) -> UidSet:
    """Library shortcut: a spec (YAML value or expression) -> its uid set (``.to_pairs()``: DataComp's array)."""
    return Evaluator(pool, definitions, subset_file).evaluate(parse_spec(spec))
