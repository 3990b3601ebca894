"""Shared fixtures. One local Ray (2 CPUs) serves every test that needs Ray."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations, which phones home


@pytest.fixture(scope="session")
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
