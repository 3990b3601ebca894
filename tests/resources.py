"""What a test starts, as pytest markers: the fast tier (``make test-fast``) leaves out every test that starts
one of these, and a test that starts one without its marker fails, naming the marker to add.

* ``ray``: a local Ray or a cluster of Ray nodes;
* ``train``: open_clip training (its runner is a child process);
* ``download``: an img2dataset download (its runner is a child process);
* ``browser``: Chromium;
* ``subprocess``: any other child process (the CLI as a user runs it, a script, a second interpreter).

A fixture that starts one is decorated with ``@starts(...)`` under its ``@pytest.fixture``: every test using
it, directly or through other fixtures, carries the markers. A test that starts one itself is marked by
hand (``@pytest.mark.subprocess``). Each marker also marks the test ``slow``.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

RESOURCES = {
    "ray": "starts Ray (a local Ray, or a cluster of Ray nodes)",
    "train": "trains with open_clip (a child process)",
    "download": "downloads with img2dataset (a child process)",
    "browser": "starts a browser (Chromium)",
    "subprocess": "starts a child process",
}
SLOW = "slow"
# programs libraries run once to probe the machine (ctypes.util.find_library runs ldconfig): not the test's
PROBES = {"ldconfig", "uname", "nvidia-smi", "lscpu", "sysctl"}


def starts(*resources: str) -> Callable[[Any], Any]:
    """Declare that a fixture starts ``resources``: the tests that use it get their markers."""
    unknown = set(resources) - set(RESOURCES)
    if unknown:
        raise ValueError(f"unknown resource(s) {sorted(unknown)}; known: {sorted(RESOURCES)}")

    def declare(fn: Any) -> Any:
        fn.poolsieve_starts = tuple(resources)
        return fn

    return declare


def fixture_resources(item: pytest.Item) -> set[str]:
    """What the fixtures of ``item`` (all of them, however deep) declare they start."""
    found: set[str] = set()
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        for fixturedef in defs:
            found.update(getattr(fixturedef.func, "poolsieve_starts", ()))
    return found


def mark_by_fixtures(items: Sequence[pytest.Item]) -> None:
    """Give each test the markers of what its fixtures start, and ``slow`` when it starts anything."""
    for item in items:
        for resource in sorted(fixture_resources(item) - {m.name for m in item.iter_markers()}):
            item.add_marker(resource)
        if any(item.get_closest_marker(r) for r in RESOURCES) and not item.get_closest_marker(SLOW):
            item.add_marker(SLOW)


# rough cost of a test that starts each resource, to run the costliest test files first: two xdist workers
# (``make test``: one file at a time each, in this order with --no-loadscope-reorder) then end together
# instead of one waiting on a long file taken last
COST = {"train": 4, "download": 3, "ray": 3, "browser": 2, "subprocess": 1}


def costliest_files_first(items: list[pytest.Item]) -> None:
    """Order ``items`` by their file's summed cost, costliest first (a stable sort: each file's tests stay
    together and in order)."""
    cost: Counter[str] = Counter()
    for item in items:
        marked = {r for r in COST if item.get_closest_marker(r)}
        pipeline = 3 if {"train", "download"} <= marked else 1  # a whole pipeline: download, score, train, ...
        cost[item.nodeid.split("::")[0]] += pipeline * sum(COST[r] for r in marked)
    items.sort(key=lambda item: -cost[item.nodeid.split("::")[0]])


def resource_of(argv: Any) -> str:
    """Which resource a child process with command line ``argv`` is."""
    args = [os.fsdecode(a) for a in (argv if isinstance(argv, (list, tuple)) else [argv])]
    program = Path(args[0]).name if args else ""
    module = args[args.index("-m") + 1] if "-m" in args[:-1] else ""
    script = next((a for a in args[1:] if not a.startswith("-")), "")
    if program in PROBES:
        return "probe"
    if "chrom" in program:
        return "browser"
    if module in ("poolsieve.train.open_clip_runner", "torch.distributed.run"):
        return "train"
    if module == "poolsieve.pipeline.download.runner":
        return "download"
    if program in ("ray", "raylet", "gcs_server") or module.startswith("ray.") or "/ray/" in script:
        return "ray"
    return "subprocess"


class Guard:
    """Fails the running test when it starts a child process its markers do not declare."""

    def __init__(self) -> None:
        self.item: pytest.Item | None = None
        self.violations: list[str] = []
        self._saved: tuple[Any, Any] | None = None

    def check(self, resource: str, what: str) -> None:
        item = self.item
        if item is None or resource == "probe":  # collection, between tests, a library's probe of the machine
            return
        marked = {r for r in RESOURCES if item.get_closest_marker(r)}
        if resource in marked or (resource == "subprocess" and marked):
            return
        shown = " ".join(what.split())[:120]
        message = (f"{item.nodeid} {RESOURCES[resource]} ({shown}) without its marker: add "
                   f"@pytest.mark.{resource}, or use a fixture declared with @starts({resource!r}) (tests/resources.py)")
        self.violations.append(message)
        pytest.fail(message, pytrace=False)

    def install(self) -> None:
        popen_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]
        process_start = multiprocessing.process.BaseProcess.start
        guard = self

        def _execute_child(popen: Any, args: Any, *rest: Any, **kw: Any) -> Any:
            guard.check(resource_of(args), " ".join(map(os.fsdecode, args)) if isinstance(args, (list, tuple))
                        else os.fsdecode(args))
            return popen_child(popen, args, *rest, **kw)

        def start(process: Any) -> Any:
            guard.check("subprocess", f"multiprocessing {process.name}")
            return process_start(process)

        self._saved = (popen_child, process_start)
        subprocess.Popen._execute_child = _execute_child  # type: ignore[attr-defined]
        multiprocessing.process.BaseProcess.start = start  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._saved is not None:
            subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start = self._saved  # type: ignore
            self._saved = None
