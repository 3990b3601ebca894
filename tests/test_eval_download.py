"""``poolsieve evaluate --download DIR`` against a miniature hub on 127.0.0.1: DataComp's layout, resume
after a kill, one line per failed set, one line offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_minisets import MiniHub, all_repos

from poolsieve.eval.tasks import DATACOMP_TASKS, get_task

CLI = [sys.executable, "-c", "import sys; from poolsieve.pipeline.cli import main; sys.exit(main())"]


def _run(args: list[str], endpoint: str, home: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.Popen([*CLI, "evaluate", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


@pytest.mark.subprocess
def test_download_all_sets_in_datacomps_layout(tmp_path):
    from poolsieve.eval.hub_datasets import load_hf_test_set

    repos = all_repos()
    dest = tmp_path / "evalsets"
    with MiniHub(repos) as hub:
        proc = _run(["--download", str(dest)], hub.endpoint, tmp_path / "home")
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = [s for s in err.splitlines() if s.startswith("download [")]
    assert len(lines) == 40 and "40 of 40 evaluation sets" in err
    for task in DATACOMP_TASKS:
        if task.source == "wds":
            for name, data in repos[task.hub_repo].items():
                assert (dest / task.wds_name / name).read_bytes() == data, (task.key, name)
            assert not list((dest / task.wds_name).rglob("*.part"))
        else:  # readable offline from DIR/hf_cache, as evaluate --data-root reads it
            assert len(load_hf_test_set(task, str(dest))) == (4 if task.key != "misc/winogavil" else 4)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [t.wds_name for t in DATACOMP_TASKS if t.source == "wds"] + ["hf_cache"])


@pytest.mark.subprocess
def test_killed_download_resumes_and_failed_sets_are_one_line(tmp_path):
    task = get_task("cifar10")
    files = all_repos([task])[task.hub_repo]
    files["test/0.tar"] = files["test/0.tar"] + os.urandom(1 << 20)  # big enough to be cut halfway
    dest = tmp_path / "evalsets"
    tar, part = dest / task.wds_name / "test" / "0.tar", dest / task.wds_name / "test" / "0.tar.part"
    with MiniHub({task.hub_repo: files}, stall=f"{task.hub_repo}/test/0.tar") as hub:
        proc = _run(["--download", str(dest), "--tasks", "cifar10"], hub.endpoint, tmp_path / "home")
        assert hub.handler.stalled.wait(60)
        deadline = time.monotonic() + 30
        while (not part.exists() or part.stat().st_size < (1 << 18)) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()
        proc.communicate()
        have = part.stat().st_size
        assert 0 < have < len(files["test/0.tar"]) and not tar.exists()

        again = _run(["--download", str(dest), "--tasks", "cifar10,mnist"], hub.endpoint, tmp_path / "home")
        _out, err = again.communicate(timeout=120)
    assert tar.read_bytes() == files["test/0.tar"] and not part.exists()
    assert any(s.startswith("GET") and "0.tar" in s and f"range=bytes={have}-" in s for s in hub.handler.seen)
    failed = [s for s in err.splitlines() if s.startswith("download [") and "failed:" in s]
    assert again.returncode == 1 and len(failed) == 1 and "MNIST" in failed[0]  # not on this hub


@pytest.mark.subprocess
def test_offline_fails_in_one_line(tmp_path):
    proc = _run(["--download", str(tmp_path / "d")], "http://127.0.0.1:9", tmp_path / "home")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "cannot reach the hub at http://127.0.0.1:9" in err


@pytest.mark.parametrize("offline_root", [True])
def test_offline_hub_dataset_load_is_one_line(tmp_path, offline_root, capsys):
    """A retrieval set missing from DIR/hf_cache: one line naming the cache, no retry warnings."""
    from poolsieve.pipeline import cli

    code = cli.main(["evaluate", "-w", str(tmp_path / "ws"), "--executor", "local", "--model", "poolsieve-tiny",
                     "--tasks", "MSCOCO", "--data-root", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "hf_cache: cannot load nlphuji/mscoco_2014_5k_test_image_text_retrieval" in err[0]


def test_webdataset_sets_download_in_this_process(tmp_path, monkeypatch, capsys):
    """The webdataset sets fetched by download_evalsets itself (no child process): DataComp's layout, a
    ``.part`` left by a killed run continued, a set already whole kept, a set the hub lacks one line."""
    from poolsieve.eval.download import download_evalsets

    tasks = [get_task("cifar10"), get_task("wilds/iwildcam"), get_task("fairness/geode")]
    repos = all_repos(tasks)
    dest = tmp_path / "evalsets"
    half = dest / tasks[0].wds_name / "test" / "0.tar.part"
    half.parent.mkdir(parents=True)
    half.write_bytes(repos[tasks[0].hub_repo]["test/0.tar"][:700])
    with MiniHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        first = download_evalsets(dest, ",".join(t.key for t in tasks))
        ranges = [h for h in hub.handler.seen if h.endswith("range=bytes=700-")]
        again = download_evalsets(dest, "cifar10")
    with MiniHub({k: v for k, v in repos.items() if k != tasks[1].hub_repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        (dest / tasks[1].wds_name).rename(tmp_path / "moved")
        partial = download_evalsets(dest, "cifar10,wilds/iwildcam")
    assert first["done"] == [t.key for t in tasks] and first["failed"] == [] and again["failed"] == []
    for task in tasks:
        for name, data in repos[task.hub_repo].items():
            if task is not tasks[1]:
                assert (dest / task.wds_name / name).read_bytes() == data, (task.key, name)
    assert not list(dest.rglob("*.part")) and ranges
    assert partial["done"] == [tasks[0].key] and partial["failed"] == ["wilds/iwildcam"]
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("download [2/2] iWildCam: failed: PoolsieveError:") for line in err)
