"""Dependencies point one way: CLI / orchestration -> stages -> filters, train, eval -> core.

Read from the source with ``ast``, imports inside functions and under ``TYPE_CHECKING`` included:

* no import cycle among poolsieve's modules;
* core imports no other poolsieve package; the libraries (filters, train, eval) import core and
  themselves, never a stage or each other; the stage modules of train and eval (their ``cli.py``)
  may use the other libraries;
* a stage (a command of ``pipeline/commands.py`` that runs no other stage: its package under
  ``pipeline/``, or its one module) imports no other stage and nothing of the orchestration (the CLI,
  the registry, ``run``, ``train-scorer``, the demo); nothing but the orchestration imports the demo;
* the Python API (``api/``) sits beside the stages and nothing imports it;
* a function imports inside itself only the heavy libraries (torch, Ray, open_clip, ...), never
  poolsieve's own modules or light ones, so a module's dependencies show at its top;
* ``pyproject.toml`` lists every package folder (a folder missing there is left out of a wheel).
* no production module is over 450 lines and no function over 80 (split them by concern).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from poolsieve.pipeline.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()
# the top-level folders pyproject.toml maps into the namespace ("poolsieve.core" = "core", ...)
PACKAGES = tuple(re.findall(r'^"poolsieve\.(\w+)" = "\1"$', PYPROJECT.split("[tool.setuptools.package-dir]")[1],
                            flags=re.M))
STAGE_MODULES = {"train/cli.py", "eval/cli.py"}
ORCHESTRATION = {"poolsieve.pipeline", "poolsieve.pipeline.cli", "poolsieve.pipeline.commands"} | {
    c.module for c in COMMANDS if c.runs_stages}
DEMO = "poolsieve.pipeline.demo"
# imported inside functions only: each costs a second or more to import (or pulls in torch) or is an optional
# extra (gcld3; duckdb and polars, the [sql] extra on main), and many commands never need it;
# `poolsieve filter --help` imports none of them
HEAVY = {"torch", "torchvision", "open_clip", "open_clip_train", "ray", "faiss", "img2dataset", "webdataset",
         "clip_benchmark", "datasets", "wilds", "sklearn", "nltk", "gcld3", "safetensors",
         "huggingface_hub", "transformers", "duckdb", "polars"}


def module_name(path: Path) -> str:
    parts = ["poolsieve", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


ALL_FILES = [p for folder in PACKAGES for p in files(folder)]
MODULES = {module_name(p) for p in ALL_FILES}


def imports(path: Path) -> Iterator[tuple[ast.AST, str]]:
    """(node, imported module) for every import in ``path``; relative imports resolved, and
    ``from pkg import mod`` read as the module ``pkg.mod`` where there is one."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                yield node, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


def poolsieve_imports(path: Path) -> set[str]:
    """The ``poolsieve.X.Y`` modules a file imports."""
    return {m for _, m in imports(path) if m.startswith("poolsieve.")}


def layer_of(module: str) -> str:
    return "demo" if module == DEMO or module.startswith(DEMO + ".") else module.split(".")[1]


def inside(module: str, owner: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def stage_of(module: str) -> str | None:
    """The stage whose room ``module`` is in: the package of ``pipeline/<stage>/stage.py``, else the module."""
    for c in COMMANDS:
        if c.runs_stages or inside(c.module, DEMO):
            continue
        room = c.module.rsplit(".", 1)[0] if c.module.startswith("poolsieve.pipeline.") and \
            c.module.endswith(".stage") else c.module
        if inside(module, room):
            return c.name
    return None


def is_orchestration(module: str) -> bool:
    return module in ORCHESTRATION or inside(module, DEMO)


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
    users = {module_name(p) for p in ALL_FILES if any(layer_of(m) == "demo" for m in poolsieve_imports(p))}
    assert {u for u in users if not is_orchestration(u)} == set()


def test_nothing_imports_the_api() -> None:
    users = {module_name(p) for p in ALL_FILES if any(layer_of(m) == "api" for m in poolsieve_imports(p))}
    assert {u for u in users if not inside(u, "poolsieve.api")} == set()


def test_every_pipeline_module_is_a_stage_orchestration_or_the_demo() -> None:
    homeless = [module_name(p) for p in files("pipeline")
                if not is_orchestration(module_name(p)) and stage_of(module_name(p)) is None]
    assert homeless == []


def stage_edges() -> list[tuple[str, str, str]]:
    """(importer, its stage, imported module) for every import made by a stage's module."""
    return [(module_name(p), stage, m) for p in ALL_FILES if (stage := stage_of(module_name(p)))
            for m in poolsieve_imports(p)]


def test_stages_import_no_orchestration() -> None:
    bad = [f"{importer} (stage {stage}) imports {m}" for importer, stage, m in stage_edges() if is_orchestration(m)]
    assert not bad, "\n".join(bad)


def test_stages_import_no_other_stage() -> None:
    bad = [f"{importer} (stage {stage}) imports {m} (stage {other})" for importer, stage, m in stage_edges()
           if (other := stage_of(m)) not in (None, stage)]
    assert not bad, "\n".join(bad)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    cycles.append(sorted(component))
    return cycles


def import_graph() -> dict[str, set[str]]:
    """Module -> the poolsieve modules it imports (a package's ``__init__`` stands for the package)."""
    return {module_name(p): {m for m in poolsieve_imports(p) if m in MODULES and m != module_name(p)}
            for p in ALL_FILES}


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (move the shared piece down into a module both can import):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(import_cycles(graph)) == [["a", "b", "c"], ["e"]]


def local_imports(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, function, module) of every import inside a function of ``path``."""
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    yield from ((node.lineno, fn.name, a.name) for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    yield node.lineno, fn.name, "." * node.level + (node.module or "")


def test_functions_import_only_heavy_libraries() -> None:
    bad = sorted({f"{p.relative_to(ROOT)}:{line} {fn}() imports {m}" for p in ALL_FILES
                  for line, fn, m in local_imports(p) if m.split(".")[0] not in HEAVY})
    assert not bad, "import these at the top of the module:\n" + "\n".join(bad)


def test_pyproject_lists_every_package_folder() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads(PYPROJECT)["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {p.parent for p in ALL_FILES}
    expected = {module_name(f / "__init__.py") for f in folders}
    assert sorted(expected - listed) == [], "package folders missing from pyproject.toml's packages"
    data = setuptools.get("package-data", {})  # a folder of data files alone (core/model_configs) is a package too
    assert sorted(listed - expected - set(data)) == [], "pyproject.toml lists packages that do not exist"
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []
    assert setuptools["package-dir"] == {f"poolsieve.{p}": p for p in PACKAGES}
    assert {"core", "pipeline", "filters", "train", "eval"} <= set(PACKAGES)
    for package, patterns in data.items():
        folder = ROOT.joinpath(*package.split(".")[1:])
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"package-data {package}: {pattern} matches no file"


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def size_offenders(rel: str, source: str) -> list[str]:
    """``rel`` when its ``source`` is over ``MAX_MODULE_LINES`` lines, and each function (method, nested
    function) of it over ``MAX_FUNCTION_LINES``, from its ``def`` line to its last, by qualified name."""
    lines = len(source.splitlines())
    out = [f"{rel}: {lines} lines (at most {MAX_MODULE_LINES})"] if lines > MAX_MODULE_LINES else []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and length > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{child.lineno} {name}() is {length} lines (at most {MAX_FUNCTION_LINES})")
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def test_no_module_over_450_lines_and_no_function_over_80() -> None:
    bad = [o for p in ALL_FILES for o in size_offenders(str(p.relative_to(ROOT)), p.read_text())]
    assert not bad, "split these along their concerns (one owner each, ARCHITECTURE.md):\n" + "\n".join(bad)


def test_size_check_names_the_offenders() -> None:
    def body(n: int) -> str:
        return "\n".join(f"    x{i} = {i}" for i in range(n))

    source = f"class A:\n    def long(self):\n{textwrap.indent(body(80), '    ')}\n\n\ndef short():\n    return 1\n"
    assert size_offenders("m.py", source) == ["m.py:2 A.long() is 81 lines (at most 80)"]
    source = "def f():\n" + body(80) + "\n" + "\n".join(f"y{i} = {i}" for i in range(450))
    assert size_offenders("m.py", source) == ["m.py: 531 lines (at most 450)", "m.py:1 f() is 81 lines (at most 80)"]
    assert size_offenders("m.py", "async def g():\n" + body(79) + "\n" * 371) == []  # 80 and 450 lines: allowed


@pytest.mark.subprocess
def test_importing_any_module_loads_no_heavy_library() -> None:
    """Every module imports at the cost of its light dependencies; torch, Ray, open_clip, ... load only in
    the functions that use them (``core/language.py``, say, is imported by every filter)."""
    code = ("import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    res = subprocess.run([sys.executable, "-c", code, *sorted(MODULES)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = set(res.stdout.split())
    assert "pyarrow" in loaded and sorted(loaded & HEAVY) == []


def test_architecture_says_where_each_command_lives() -> None:
    """ARCHITECTURE.md's command table names each command's module as the registry does."""
    rows = dict(re.findall(r"^\| `([\w-]+)` \| `([\w/.]+\.py)`", (ROOT / "ARCHITECTURE.md").read_text(), flags=re.M))
    expected = {c.name: c.module.removeprefix("poolsieve.").replace(".", "/") + ".py" for c in COMMANDS}
    assert rows == expected
