"""The CLI: help for every stage, and one-line errors with a non-zero exit code on bad input."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from poolsieve.pipeline.cli import main
from poolsieve.pipeline.commands import BY_NAME as COMMANDS


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poolsieve.pipeline.cli", *argv], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_stage_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"poolsieve {command}" in out
    assert "--workspace" in out and "--config" in out and "--ray-address" in out


@pytest.mark.subprocess  # the CLI as a user runs it
def test_missing_workspace_is_one_line_error(tmp_path):
    res = run_cli("inspect", "--workspace", str(tmp_path / "nope"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "workspace does not exist" in lines[0] and "nope" in lines[0]


@pytest.mark.subprocess  # the CLI as a user runs it
def test_malformed_config_is_one_line_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("score: {models: [ViT-B-32\n")
    res = run_cli("score", "--workspace", str(tmp_path), "--config", str(cfg))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml: malformed YAML at line" in lines[0]


@pytest.mark.subprocess  # the CLI as a user runs it
def test_parquet_without_uid_is_one_line_error(tmp_path):
    ws = tmp_path / "ws"
    (ws / "scores").mkdir(parents=True)
    pd.DataFrame({"text": ["a red circle"], "clip_b32_similarity_score": [0.3]}).to_parquet(
        ws / "scores" / "00000.parquet")
    res = run_cli("filter", "--workspace", str(ws), "--executor", "local", "--spec", "all: no_filter")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "00000.parquet" in lines[0] and "uid" in lines[0]


@pytest.mark.subprocess  # the CLI as a user runs it
def test_download_metadata_without_uid_is_one_line_error(tmp_path):
    ws = tmp_path / "ws"
    (ws / "metadata").mkdir(parents=True)
    pd.DataFrame({"url": ["http://127.0.0.1:9/x.jpg"], "text": ["a red circle"]}).to_parquet(
        ws / "metadata" / "00000.parquet")
    res = run_cli("download", "--workspace", str(ws), "--executor", "local")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "00000.parquet" in lines[0] and "uid" in lines[0]


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "quickstart" in capsys.readouterr().out


def test_own_warnings_print_on_one_line():
    from poolsieve.core.errors import PoolsieveWarning
    from poolsieve.pipeline import cli

    assert cli._format_warning("recall 0.7 below 0.95", PoolsieveWarning, "x.py", 3) == \
        "poolsieve: warning: recall 0.7 below 0.95\n"
    assert "x.py:3" in cli._format_warning("other", DeprecationWarning, "x.py", 3, "")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("poolsieve ")


@pytest.mark.parametrize("argv, suggestion", [
    (["reshrd"], "did you mean reshard?"),
    (["reshard", "--shard-sise", "3"], "did you mean --shard-size?"),
    (["filter", "--lst-filters"], "did you mean --list-filters?"),
])
def test_misspelt_words_get_the_nearest_suggestion(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert suggestion in capsys.readouterr().err


def test_run_help_shows_the_experiment_yaml_and_no_markup(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "\nworkspace: ./pool\n" in out and "evaluate: {tasks: datacomp38}" in out
    for command in sorted(COMMANDS):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "``" not in capsys.readouterr().out, command


HEAVY = ("torch", "ray", "open_clip", "faiss", "img2dataset", "webdataset", "clip_benchmark", "datasets", "wilds")


def imported_by(*argv: str) -> set[str]:
    """Top-level packages a ``python -X importtime -m poolsieve.pipeline.cli ...`` run imports (each import
    statement's line in the report), plus everything in ``sys.modules`` when ``main`` returns."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "poolsieve.pipeline.cli", *argv],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    reported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in res.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    code = ("import sys\nfrom poolsieve.pipeline.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")
    loaded = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert "poolsieve" in reported and loaded.returncode == 0, loaded.stderr[-2000:]
    return reported | set(loaded.stderr.split())


@pytest.mark.subprocess  # the CLI as a user runs it
def test_filter_help_imports_neither_torch_nor_ray():
    imported = imported_by("filter", "--help")
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert "yaml" in imported  # the report is read: the filter stage's own dependencies are in it


@pytest.mark.subprocess  # the CLI as a user runs it
def test_top_level_help_imports_no_stage():
    code = ("import sys\nfrom poolsieve.pipeline.cli import main\nmain([])\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('poolsieve.'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    modules = set(res.stdout.strip().splitlines()[-1].split())
    assert "poolsieve.pipeline.commands" in modules
    assert not {m for m in modules if m.startswith(("poolsieve.pipeline.", "poolsieve.train.", "poolsieve.eval.",
                                                    "poolsieve.filters."))} - {"poolsieve.pipeline.cli",
                                                                                "poolsieve.pipeline.commands"}


def test_every_command_declares_its_hooks():
    """Each command's module declares STAGE or run_cli; the stages `poolsieve run` runs are sections of its
    file under the command's own name."""
    import types

    from poolsieve.pipeline.commands import COMMANDS, RUN_STAGES, Hooks

    for command in COMMANDS:
        hooks = command.hooks()
        assert (hooks.stage is None) != (hooks.run_cli is None), command.name
        assert hooks.doc and command.help and not command.help.endswith(".")
        if command.in_run:
            assert hooks.stage.name == command.name and command.name in RUN_STAGES
    assert RUN_STAGES == ("download", "score", "filter", "reshard", "train", "evaluate")
    both = types.ModuleType("both")
    both.STAGE, both.run_cli = object(), print
    with pytest.raises(TypeError, match="STAGE or run_cli"):
        Hooks.of("both", both)
    neither = types.ModuleType("neither")
    with pytest.raises(TypeError, match="STAGE or run_cli"):
        Hooks.of("neither", neither)
    action_only = types.ModuleType("action_only")
    action_only.run_cli, action_only.cli_action = print, print
    with pytest.raises(TypeError, match="cli_action without a STAGE"):
        Hooks.of("action_only", action_only)
