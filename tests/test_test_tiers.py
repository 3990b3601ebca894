"""The test tiers: a test is marked by what it starts (from its fixtures or by hand), the fast tier leaves
those out, and a test that starts a child process without its marker fails, naming the marker to add."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from resources import resource_of

HERE = Path(__file__).resolve().parent


@pytest.fixture
def tiers(pytester: pytest.Pytester) -> pytest.Pytester:
    """A test folder with this suite's conftest.py and resources.py."""
    for name in ("conftest.py", "resources.py"):
        shutil.copy(HERE / name, pytester.path / name)
    return pytester


def test_a_child_process_without_its_marker_fails_naming_the_marker(tiers: pytest.Pytester) -> None:
    tiers.makepyfile(test_child="""
        import multiprocessing, subprocess, sys

        def test_runs_a_script():
            subprocess.run([sys.executable, "-c", "open('ran', 'w')"], check=True)

        def test_trains():
            subprocess.run([sys.executable, "-m", "poolsieve.train.open_clip_runner", "--help"])

        def test_starts_a_process():
            multiprocessing.get_context("spawn").Process(target=print).start()
    """)
    result = tiers.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*test_runs_a_script starts a child process*add @pytest.mark.subprocess*",
                                 "*test_trains trains with open_clip*add @pytest.mark.train*",
                                 "*test_starts_a_process starts a child process (multiprocessing*"])
    assert not (tiers.path / "ran").exists()  # stopped before it started


def test_fixtures_mark_the_tests_that_use_them(tiers: pytest.Pytester) -> None:
    tiers.makepyfile(test_uses="""
        import pytest
        from resources import starts

        @pytest.fixture
        @starts("ray")
        def cluster():
            return "a cluster"

        @pytest.fixture
        def runtime(cluster):
            return cluster

        def test_direct(cluster): pass
        def test_through_another_fixture(runtime): pass
        @pytest.mark.browser
        def test_by_hand(): pass
        def test_starts_nothing(): pass
    """)
    fast = tiers.runpytest_inprocess("--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider")
    fast.stdout.fnmatch_lines(["test_uses.py::test_starts_nothing", "*1/4 tests collected (3 deselected)*"])
    on_ray = tiers.runpytest_inprocess("--collect-only", "-q", "-m", "ray", "-p", "no:cacheprovider")
    on_ray.stdout.fnmatch_lines(["test_uses.py::test_direct", "test_uses.py::test_through_another_fixture",
                                 "*2/4 tests collected (2 deselected)*"])


@pytest.mark.parametrize("argv, resource", [
    ([sys.executable, "-m", "poolsieve.train.open_clip_runner", "--epochs", "1"], "train"),
    ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "x"], "train"),
    ([sys.executable, "-m", "poolsieve.pipeline.download.runner", "job.json"], "download"),
    (["/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp"], "ray"),
    ([sys.executable, "-u", "/venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py"], "ray"),
    (["/usr/bin/chromium", "--headless"], "browser"),
    ([sys.executable, "-c", "import x", "poolsieve.train.open_clip_runner"], "subprocess"),
    ("ls -l", "subprocess"),
    (["/sbin/ldconfig", "-p"], "probe"),
])
def test_a_child_is_known_by_what_it_runs(argv, resource) -> None:
    assert resource_of(argv) == resource


def test_costliest_files_run_first(tiers: pytest.Pytester) -> None:
    tiers.makepyfile(test_a="def test_light(): pass", test_b="""
        import pytest

        @pytest.mark.subprocess
        def test_script(): pass
        def test_light(): pass
    """, test_c="""
        import pytest

        @pytest.mark.train
        @pytest.mark.download
        def test_pipeline(): pass
    """)
    listed = tiers.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    listed.stdout.fnmatch_lines(["test_c.py::test_pipeline", "test_b.py::test_script", "test_b.py::test_light",
                                 "test_a.py::test_light"])
