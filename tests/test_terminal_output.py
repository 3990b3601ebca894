"""The terminal shows poolsieve's own output; what libraries print goes to <workspace>/logs/<command>.log.

Commands run as a user runs them (a subprocess whose output is a pipe, not a terminal): Ray's
token-authentication banner, colour codes, webdataset's warnings and clip_benchmark's progress bars
must not reach stdout or stderr, and must be in the command's log. The serve and download commands that
``generate`` prints work when followed literally.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pytest
from factories import make_samples, write_img2dataset_shards

from poolsieve.core.errors import PoolsieveWarning
from poolsieve.core.stage_log import capture
from poolsieve.core.workspace import Workspace

ANSI = re.compile(r"\x1b\[")
TQDM_BAR = re.compile(r"\d+%\||it/s\]|s/it\]")
RAY_BANNER = "Token authentication is enabled"


def _env() -> dict[str, str]:
    """The user's environment: none of the switches that would hide what is tested."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_COLOR_PREFIX", "TQDM_DISABLE", "PYTHONWARNINGS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's poolsieve
    return env


def _poolsieve(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poolsieve.pipeline.cli", *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def _assert_clean(proc: subprocess.CompletedProcess) -> None:
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0, both
    assert RAY_BANNER not in both, both
    assert not ANSI.search(both), both
    assert not TQDM_BAR.search(both), both
    assert "Warning:" not in both and "WARNING" not in both, both  # library warnings and log records


def _tiny_checkpoint(path: Path) -> Path:
    import open_clip
    import torch

    from poolsieve.core.models import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    torch.save({"state_dict": open_clip.create_model("poolsieve-tiny").state_dict()}, path)
    return path


@pytest.mark.subprocess
@pytest.mark.ray  # a real local Ray must start (its banner is what is tested)
def test_score_on_ray_keeps_rays_banner_and_worker_lines_in_the_log(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_img2dataset_shards(ws / "shards", make_samples(24, seed=5, image_size=32), per_shard=12)
    checkpoint = _tiny_checkpoint(tmp_path / "tiny.pt")
    proc = _poolsieve("score", "-w", str(ws), "--model", f"poolsieve-tiny:{checkpoint}", "--num-cpus", "2")
    _assert_clean(proc)
    assert "== score" in proc.stdout and "score: 2/2 shards" in proc.stderr  # our summary and progress stay
    log = Workspace(ws).log_path("score").read_text()
    assert log.startswith("==== ") and "poolsieve score -w" in log.splitlines()[0]
    assert RAY_BANNER in log and "Started a local Ray instance" in log


def _colour_task(folder: Path, n: int = 12) -> Path:
    """A clip_benchmark webdataset classification task (labels: the shape's colour)."""
    import io

    from poolsieve.core.shapes import COLOURS, generate_clean_pairs

    classes = list(COLOURS)
    (folder / "test").mkdir(parents=True)
    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for i, (_uid, jpeg, _caption, _shape, colour) in enumerate(generate_clean_pairs(n, 7, 32)):
            for name, data in ((f"s{i:05d}.jpg", jpeg), (f"s{i:05d}.cls", str(classes.index(colour)).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (folder / "test" / "nshards.txt").write_text("1\n")
    (folder / "classnames.txt").write_text("\n".join(classes) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c} shape.\n")
    return folder


@pytest.mark.subprocess  # it imports torch, open_clip and clip_benchmark
def test_evaluate_keeps_clip_benchmark_bars_and_webdataset_warnings_in_the_log(tmp_path: Path) -> None:
    task = _colour_task(tmp_path / "colours")
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = _poolsieve("evaluate", "-w", str(ws), "--executor", "local", "--model", "poolsieve-tiny",
                      "--tasks", str(task))
    _assert_clean(proc)
    assert "webdataset" not in proc.stderr
    assert "== evaluate" in proc.stdout and "evaluate poolsieve-tiny: 1/1 tasks" in proc.stderr
    log = Workspace(ws).log_path("evaluate").read_text()
    assert "WebDataset(shardshuffle=...)" in log  # webdataset's warning
    assert TQDM_BAR.search(log)  # clip_benchmark's bars


def _print_and_warn(x: int) -> int:
    print(f"hello from worker {x}", flush=True)
    warnings.warn(f"unit {x} was short", PoolsieveWarning, stacklevel=1)
    return x


def test_ray_workers_lines_go_to_the_log_and_their_poolsieve_warnings_to_the_terminal(tmp_path, ray_runtime,
                                                                                       capsys) -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this module
    path = tmp_path / "logs" / "x.log"
    terminal = ""
    with capture(path, "x"):
        assert list(ray_runtime.ordered_map(_print_and_warn, [7])) == [7]
        deadline = time.monotonic() + 60  # Ray forwards workers' output asynchronously
        while time.monotonic() < deadline:
            terminal += capsys.readouterr().err
            log = path.read_text() if path.exists() else ""
            if "hello from worker 7" in log and "unit 7 was short" in terminal:
                break
            time.sleep(0.2)
    assert re.search(r"\(_print_and_warn pid=\d+[^)]*\) hello from worker 7", log), log
    assert "poolsieve: warning: unit 7 was short" in terminal, terminal
    assert "hello from worker" not in terminal and not ANSI.search(terminal)


def test_hub_retries_and_library_records_go_to_the_log(tmp_path, capsys) -> None:
    import datasets
    import huggingface_hub.utils.logging as hub_logging

    path = tmp_path / "logs" / "score.log"
    datasets_handlers = list(logging.getLogger("datasets").handlers)
    with capture(path, "score"):
        hub_logging.get_logger("huggingface_hub.utils._http").warning(
            "'(MaxRetryError('HTTPSConnectionPool(host=huggingface.co)'))' thrown while requesting HEAD "
            "https://huggingface.co/x, Retrying in 1s [Retry 1/5].")
        datasets.utils.logging.get_logger("datasets.load").warning("datasets says something")
        logging.getLogger("some.library").info("a library note")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        warnings.warn("poolsieve's own", PoolsieveWarning, stacklevel=1)
    out = capsys.readouterr()
    log = path.read_text()
    for text in ("Retrying in 1s [Retry 1/5]", "datasets says something", "a library note", "a library's warning"):
        assert text in log and text not in out.err + out.out
    assert "poolsieve's own" in out.err and "poolsieve's own" not in log
    assert logging.getLogger("datasets").handlers == datasets_handlers  # put back as they were


def test_a_command_that_fails_before_its_workspace_exists_creates_nothing(tmp_path, capsys) -> None:
    from poolsieve.pipeline.cli import main

    missing = tmp_path / "nope"
    assert main(["score", "-w", str(missing), "--executor", "local"]) == 2
    assert not missing.exists()
    assert "workspace does not exist" in capsys.readouterr().err


def test_a_warning_during_a_bar_in_place_gets_a_line_of_its_own() -> None:
    import fcntl
    import select
    import struct
    import termios

    from poolsieve.core.progress import Progress, print_line

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with os.fdopen(slave, "w") as tty:
        p = Progress("score", total=4, unit="shards", stream=tty)
        p.update(1)
        print_line("poolsieve: warning: something short", tty)
        p.update(3)
        p.close()
    chunks = []
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunks.append(os.read(master, 65536))
        except OSError:
            break
    os.close(master)
    text = b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal ends lines with \r\n
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.split("\n")]  # what stays visible on each
    assert "poolsieve: warning: something short" in lines  # alone on its line, not glued to the bar
    assert "4/4" in lines[-2] or "4/4" in lines[-1]  # the bar is redrawn below it and ends complete


# ------------------------------------------------------------------------------ generate's commands
def _field(stdout: str, name: str) -> str:
    line = next(line for line in stdout.splitlines() if line.strip().startswith(name))
    return line.strip()[len(name):].strip()


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.mark.subprocess
@pytest.mark.download  # three subprocesses, one a real img2dataset download over HTTP
def test_generate_prints_serve_and_download_commands_that_work_as_printed(tmp_path: Path) -> None:
    from poolsieve.pipeline.demo.image_server import free_port

    port = free_port()
    ws = tmp_path / "pool"
    gen = _poolsieve("generate", "-w", str(ws), "--num-samples", "12", "--image-size", "48",
                     "--base-url", f"http://127.0.0.1:{port}/pool")
    assert gen.returncode == 0, gen.stderr
    serve, fetch = _field(gen.stdout, "serve images with"), _field(gen.stdout, "then download with")
    assert f"--port {port}" in serve and "--prefix /pool" in serve
    argv = shlex.split(fetch)
    argv[0] = shutil.which(argv[0], path=_env()["PATH"]) or argv[0]  # `poolsieve`, as on the user's PATH
    server = subprocess.Popen(shlex.split(serve), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, server)
        down = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert down.returncode == 0, down.stdout + down.stderr
    import json

    report = json.loads((ws / "shards" / "download_report.json").read_text())
    assert report["successes"] > 0 and report["samples"] == 12, report
    assert "success rate" in down.stdout


def test_serve_command_names_the_schemes_default_port_and_refuses_what_it_cannot_serve() -> None:
    from poolsieve.core.errors import ConfigError
    from poolsieve.pipeline.demo.image_server import serve_command

    assert serve_command("/w s", "http://localhost").endswith("'/w s' --host localhost --port 80")
    with pytest.raises(ConfigError, match="http://HOST"):
        serve_command("/w", "https://127.0.0.1:8443")


def test_a_library_handler_on_a_closed_stream_is_taken_off_too(tmp_path, capsys) -> None:
    """A handler a library bound to a stderr that has since been replaced and closed writes nothing and
    prints no '--- Logging error ---': the record goes to the log."""
    stale = io.StringIO()
    logger = logging.getLogger("some.hub.library")
    handler = logging.StreamHandler(stale)
    logger.addHandler(handler)
    stale.close()
    try:
        with capture(tmp_path / "score.log", "score"):
            logger.warning("retrying in 1s")
        out = capsys.readouterr()
        assert "Logging error" not in out.err and "retrying in 1s" not in out.err
        assert "retrying in 1s" in (tmp_path / "score.log").read_text()
        assert handler in logger.handlers  # given back afterwards
    finally:
        logger.removeHandler(handler)
