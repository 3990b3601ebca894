"""Config files: one YAML mapping with a section per stage; dataclasses give each stage its defaults.

```yaml
workspace: ./pool            # optional; --workspace wins
ray_address: null            # optional; --ray-address wins
download: {processes: 2, threads: 16}
score: {models: [{arch: ViT-B-32, pretrained: openai}]}
filter: {subsets: {clip30: {clip_score: {fraction: 0.3}}}}
```

A stage reads its own section; command-line flags override it. Unknown keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML config file into a dict (``{}`` when no path is given)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: malformed YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {type(data).__name__}")
    return data


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{name}' must be a mapping, got {type(value).__name__}")
    return value


def build(cls: type[T], values: dict[str, Any], where: str, overrides: dict[str, Any] | None = None) -> T:
    """Make dataclass ``cls`` from a config section plus overrides (``None`` overrides are ignored)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"config section '{where}': unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    merged = dict(values)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    hints = typing.get_type_hints(cls)
    for name, value in merged.items():
        merged[name] = _coerce(value, hints.get(name), f"{where}.{name}")
    try:
        return cls(**merged)
    except TypeError as e:
        raise ConfigError(f"config section '{where}': {e}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Light type checking for scalars so that ``threads: many`` fails early with a clear message."""
    if value is None or hint is None:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], where)
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value
