"""The one rule for every name a user gives: subset, run, evaluation, scorer, submission.

A name becomes a file or folder name in the workspace and in DataComp's upload layout, and is echoed
on the terminal and in the report. So it is DataComp-safe: ASCII letters, digits, ``_``, ``-`` and
``.``; it starts with a letter, digit or ``_`` (never a dot: no hidden files, no ``..``); at most 128
characters. Anything else (a slash, a space, a newline, a terminal escape) is refused in one line.
"""

from __future__ import annotations

import re

from .errors import ConfigError

NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}"
_NAME = re.compile(NAME_PATTERN)


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: object, what: str = "name") -> str:
    """``name`` when it follows the rule above; else ``ConfigError`` naming ``what`` (e.g. "subset name")
    and showing the name escaped (``ascii()``), so control characters never reach the terminal raw."""
    if is_valid_name(name):
        return name  # type: ignore[return-value]
    shown = ascii(name) if isinstance(name, str) else f"a {type(name).__name__}"
    if isinstance(shown, str) and len(shown) > 80:
        shown = shown[:77] + "..."
    raise ConfigError(f"{what} {shown} is not allowed: use 1-128 ASCII letters, digits, '_', '-' or '.', "
                      "starting with a letter, digit or '_'")
