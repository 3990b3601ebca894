"""Filter specs: what a subset is made of, as YAML or as a one-line expression.

A spec is one of

* a filter with parameters: ``{clip_score: {column: clip_l14_similarity_score, fraction: 0.3}}``
  (``{basic: null}`` or just ``basic`` for the defaults);
* a subset: a name defined in the same spec document or a file ``subsets/NAME.npy``
  (``{subset: NAME}`` says so explicitly);
* set algebra: ``{and: [spec, ...]}``, ``{or: [spec, ...]}``, ``{not: spec}`` (the pool minus it);
* an expression string: ``basic & clip_score(fraction=0.3)``, ``image_based and not laion2b``,
  ``(a | b) & ~c``. Operators: ``&``/``and``, ``|``/``or``, ``~``/``!``/``not``, parentheses;
  ``name(key=value, ...)`` calls a filter, values are YAML scalars or ``[lists]``.

A bare name resolves, in order, to a subset defined in the same document, a registered filter,
or a subset file. Parsed specs are plain dicts (JSON-ready) with one of the keys ``filter`` (+
``params``), ``ref``, ``subset``, ``and``, ``or``, ``not``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from poolsieve.core.errors import ConfigError

Node = dict[str, Any]
NAME_RE = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_OPERATORS = ("and", "or", "not")
_TOKEN = re.compile(r"\s*(?:(?P<op>&&?|\|\|?|~|!|\(|\)|,|=)|(?P<name>" + NAME_RE + r"))")


# ------------------------------------------------------------------------------- from YAML values
def parse_spec(value: Any, where: str = "spec") -> Node:
    """A YAML value (mapping, list-free) or an expression string -> a parsed spec node."""
    if isinstance(value, str):
        return parse_expression(value, where)
    if isinstance(value, dict):
        if len(value) == 2 and set(value) == {"filter", "params"}:
            return _filter_node(value["filter"], value["params"], where)
        if len(value) != 1:
            raise ConfigError(f"{where}: a spec mapping has one key (a filter, 'and', 'or', 'not' or 'subset'), "
                              f"got {', '.join(map(str, value)) or 'none'}")
        (key, arg), = value.items()
        key = str(key)
        if key in ("and", "or"):
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{where}: '{key}' takes a non-empty list of specs, got {arg!r}")
            return {key: [parse_spec(v, f"{where}.{key}[{i}]") for i, v in enumerate(arg)]}
        if key == "not":
            return {"not": parse_spec(arg, f"{where}.not")}
        if key in ("subset", "ref"):
            if not isinstance(arg, str) or not re.fullmatch(NAME_RE, arg):
                raise ConfigError(f"{where}: '{key}' takes a subset name, got {arg!r}")
            return {key: arg}
        return _filter_node(key, arg, where)
    raise ConfigError(f"{where}: a spec is a filter name, an expression or a mapping, got {value!r}")


def _filter_node(name: Any, params: Any, where: str) -> Node:
    if not isinstance(name, str) or not re.fullmatch(NAME_RE, name):
        raise ConfigError(f"{where}: bad filter name {name!r}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: parameters of filter '{name}' must be a mapping, got {params!r}")
    return {"filter": name, "params": {str(k): v for k, v in params.items()}}


# ---------------------------------------------------------------------------------- expressions
class _Parser:
    def __init__(self, text: str, where: str):
        self.text, self.where, self.pos = text, where, 0

    def fail(self, problem: str) -> ConfigError:
        rest = self.text[self.pos:]
        column = self.pos + len(rest) - len(rest.lstrip()) + 1
        return ConfigError(f"{self.where}: {problem} at column {column} of {self.text!r}")

    def peek(self) -> tuple[str, str] | None:
        m = _TOKEN.match(self.text, self.pos)
        if not m or m.end() == m.start():
            rest = self.text[self.pos:].strip()
            if rest:
                self.pos = len(self.text) - len(self.text[self.pos:].lstrip())
                raise self.fail(f"unexpected {rest[:1]!r}")
            return None
        kind = "op" if m.group("op") else "name"
        value = m.group(kind)
        if kind == "name" and value.lower() in _OPERATORS:
            kind, value = "op", value.lower()
        return kind, {"&&": "&", "||": "|", "&": "&", "|": "|", "!": "~"}.get(value, value)

    def take(self) -> tuple[str, str] | None:
        tok = self.peek()
        m = _TOKEN.match(self.text, self.pos)
        if m:
            self.pos = m.end()
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok is None or tok[1] != value:
            raise self.fail(f"expected {value!r}")

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return node

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.peek() in (("op", "|"), ("op", "or")):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else {"or": parts}

    def and_expr(self) -> Node:
        parts = [self.not_expr()]
        while self.peek() in (("op", "&"), ("op", "and")):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else {"and": parts}

    def not_expr(self) -> Node:
        if self.peek() in (("op", "~"), ("op", "not")):
            self.take()
            return {"not": self.not_expr()}
        return self.atom()

    def atom(self) -> Node:
        tok = self.take()
        if tok == ("op", "("):
            node = self.or_expr()
            self.expect(")")
            return node
        if tok is None or tok[0] != "name":
            raise self.fail("expected a filter or subset name" + ("" if tok is None else f", got {tok[1]!r}"))
        name = tok[1]
        if self.peek() != ("op", "("):
            return {"ref": name}
        self.take()
        params: dict[str, Any] = {}
        while self.peek() != ("op", ")"):
            key = self.take()
            if key is None or key[0] != "name":
                raise self.fail(f"expected a parameter name in {name}(...)")
            self.expect("=")
            params[key[1]] = self.value()
            if self.peek() == ("op", ","):
                self.take()
            elif self.peek() != ("op", ")"):
                raise self.fail(f"expected ',' or ')' in {name}(...)")
        self.take()
        return {"filter": name, "params": params}

    def value(self) -> Any:
        """A YAML scalar or flow list, up to the next top-level ',' or ')'."""
        start, depth, quote, i = self.pos, 0, "", self.pos
        while i < len(self.text):
            c = self.text[i]
            if quote:
                quote = "" if c == quote else quote
            elif c in "'\"":
                quote = c
            elif c == "[":
                depth += 1
            elif c == "]":
                depth -= 1
            elif c in ",)" and depth == 0:
                break
            i += 1
        raw = self.text[start:i].strip()
        self.pos = i
        if not raw:
            raise self.fail("expected a value")
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            raise self.fail(f"bad value {raw!r}") from None


def parse_expression(text: str, where: str = "spec") -> Node:
    """``"basic & clip_score(fraction=0.3)"`` -> parsed spec node."""
    if not text.strip():
        raise ConfigError(f"{where}: empty spec")
    return _Parser(text, where).parse()


# ------------------------------------------------------------------------------------ rendering
def render(node: Node) -> str:
    """A parsed node as a one-line expression (parsing it gives the node back)."""
    if "filter" in node:
        params = node.get("params") or {}
        if not params:
            return node["filter"]
        args = ", ".join(f"{k}={_render_value(v)}" for k, v in params.items())
        return f"{node['filter']}({args})"
    if "ref" in node:
        return node["ref"]
    if "subset" in node:
        return node["subset"]
    if "not" in node:
        inner = node["not"]
        text = render(inner)
        return f"~{text}" if _is_atom(inner) else f"~({text})"
    op = "and" if "and" in node else "or"
    sep = " & " if op == "and" else " | "
    return sep.join(render(p) if _is_atom(p) or ("and" in p and op == "or") or "not" in p else f"({render(p)})"
                    for p in node[op])


def _is_atom(node: Node) -> bool:
    return not ({"and", "or"} & set(node))


def _render_value(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][\w.\-]*", value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def walk(node: Node, visit: Callable[[Node], None]) -> None:
    visit(node)
    for key in ("and", "or"):
        for part in node.get(key, []):
            walk(part, visit)
    if "not" in node:
        walk(node["not"], visit)


def slug(text: str) -> str:
    """A file-safe subset name made from an expression."""
    out = re.sub(r"[^A-Za-z0-9.]+", "_", text.replace("~", "not_").replace("&", "and").replace("|", "or"))
    return out.strip("_.")[:80] or "subset"


# ------------------------------------------------------------------------------ command-line specs
def parse_cli_spec(text: str, name: str | None, is_filter: Callable[[str], bool]) -> dict[str, Any]:
    """One ``--spec`` value -> ``{subset name: spec value}``.

    Accepts a YAML file (a mapping of names to specs, or one spec with ``--name``), an inline YAML
    mapping, ``NAME = EXPRESSION``, or an expression (named by ``--name`` or after itself).
    """
    stripped = text.strip()
    path = Path(stripped)
    if stripped and len(stripped) < 4096 and "\n" not in stripped and path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ConfigError(f"{path}: spec file does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: {yaml_problem(e)}") from None
        return _named(loaded, name, is_filter, str(path))
    assign = re.fullmatch(rf"\s*({NAME_RE})\s*=(?!=)\s*(.+)", text, flags=re.S)
    if assign:
        return {assign.group(1): assign.group(2).strip()}
    if stripped.startswith("{") or re.match(rf"{NAME_RE}\s*:\s", stripped):
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--spec: {yaml_problem(e)}") from None
        return _named(loaded, name, is_filter, "--spec")
    return {name or slug(stripped): stripped}


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: ``malformed YAML at line L, column C: what``."""
    mark = getattr(error, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = getattr(error, "problem", None) or str(error)
    return f"malformed YAML{at}: {' '.join(str(what).split())}"


def _named(loaded: Any, name: str | None, is_filter: Callable[[str], bool], where: str) -> dict[str, Any]:
    if isinstance(loaded, dict) and len(loaded) == 1:
        key = str(next(iter(loaded)))
        single = key in (*_OPERATORS, "subset", "filter") or is_filter(key)
        if single:
            if not name:
                raise ConfigError(f"{where}: this is one spec ({key}: ...); name the subset with --name")
            return {name: loaded}
    if isinstance(loaded, dict) and loaded:
        if name:
            raise ConfigError(f"{where}: a mapping of subset names already names its subsets; drop --name")
        return {str(k): v for k, v in loaded.items()}
    if isinstance(loaded, str) and name:
        return {name: loaded}
    raise ConfigError(f"{where}: expected a mapping of subset name -> spec, got {loaded!r}")
