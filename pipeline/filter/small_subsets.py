"""Subsets that keep little: ``poolsieve filter`` refuses to write them unless the user confirms.

A filter call that keeps under ``FEW_KEPT`` (10%) of the pool's members, or a subset that ends under it,
is refused in one line: the counts, the filter or steps, the parameter to change, and how to confirm:
``poolsieve filter --allow-small`` (``filter: {allow_small: true}`` in a ``run`` config) for every subset
of the command, or ``allow_small=true`` in a filter's call (``semdedup(eps=0.2, allow_small=true)``)
for that call and any subset whose spec makes it; a call that asks for its own size (``fraction=``,
``count=``: ``clip_score(fraction=0.05)``) is confirmed by it. Nothing of the refused subset is written;
subsets the command made before it stay.
"""

from __future__ import annotations

from typing import Any

from poolsieve.core.errors import ConfigError
from poolsieve.filters.algebra import confirms_small
from poolsieve.filters.registry import is_few, kept_share

CONFIRM = ("pass --allow-small (in a run config: 'filter: {allow_small: true}') or allow_small=true in the "
           "filter's call to write it anyway")


def refusal(subset: str, problem: str) -> str:
    """The one line for subset ``subset`` refused because of ``problem`` (the counts and what to change)."""
    return f"subset '{subset}': {problem}; nothing written: change that, or {CONFIRM}"


def spec_confirms(node: Any) -> bool:
    """Whether a (resolved) spec has a filter call that says ``allow_small=true``."""
    if isinstance(node, dict):
        if "filter" in node and confirms_small(node.get("params") or {}):
            return True
        return any(spec_confirms(v) for k, v in node.items() if k in ("and", "or", "not"))
    if isinstance(node, list):
        return any(spec_confirms(v) for v in node)
    return False


def step_shares(steps: list[dict[str, Any]], members: int, whole: str) -> str:
    """``basic 45.0%, clip_score(fraction=0.3) 30.0%``: what each step of a subset kept (the whole left out)."""
    parts = [f"{s['step']} {100 * s['count'] / members:.1f}%" for s in steps
             if "count" in s and s.get("step") != whole and not s.get("reused")]
    return ", ".join(dict.fromkeys(parts))


def check_subset_size(name: str, resolved: dict[str, Any], kept: int, members: int, steps: list[dict[str, Any]],
                      allowed: bool, whole: str) -> None:
    """``ConfigError`` (one line) when subset ``name`` keeps under ``FEW_KEPT`` of the pool unconfirmed."""
    if allowed or not is_few(kept, members) or spec_confirms(resolved):
        return
    shares = step_shares(steps, members, whole)
    raise ConfigError(refusal(name, f"it would keep {kept_share(kept, members)}"
                                    + (f"; its steps keep {shares}" if shares else "")))
