"""Shared fixtures, and the test tiers (see ``tests/resources.py``): a test is marked by what it starts
(``ray``, ``train``, ``download``, ``browser``, ``subprocess``), from the fixtures it uses or by hand, and
each of those marks it ``slow``; ``make test-fast`` runs ``-m "not slow"``. A test that starts one of
them without its marker fails. One local Ray (2 CPUs) serves every test that needs Ray."""

from __future__ import annotations

import os

import pytest
from resources import RESOURCES, SLOW, Guard, costliest_files_first, mark_by_fixtures, starts

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations, which phones home

pytest_plugins = ["pytester"]  # tests/test_test_tiers.py runs pytest on made-up test files
GUARD = Guard()


def pytest_configure(config: pytest.Config) -> None:
    for name, what in RESOURCES.items():
        config.addinivalue_line("markers", f"{name}: {what} (slow; left out of make test-fast)")
    config.addinivalue_line("markers", f"{SLOW}: starts one of {', '.join(RESOURCES)} (set from those markers)")
    GUARD.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    GUARD.uninstall()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_by_fixtures(items)
    costliest_files_first(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    GUARD.item = item
    try:
        return (yield)
    finally:
        GUARD.item = None


@pytest.fixture(scope="session")
@starts("ray")
def ray_runtime():
    """A Runtime on a local Ray started once for the session."""
    from poolsieve.core.runtime import Runtime

    rt = Runtime(executor="ray", num_cpus=2)
    rt.ensure_ray()
    yield rt
    rt.shutdown()


@pytest.fixture
def local_runtime():
    from poolsieve.core.runtime import Runtime

    return Runtime(executor="local")
