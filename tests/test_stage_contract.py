"""The stage contract: options declared once give the CLI flags, the YAML keys and their checks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from poolsieve.core.errors import ConfigError
from poolsieve.core.stage import Stage, option


@dataclass
class DemoConfig:
    subset: str | None = option(None, "subset name")
    shard_size: int = option(10_000, "samples per output shard")
    ratio: float = option(0.5, "a fraction")
    blur: bool = option(True, "blur faces")
    fast: bool = option(False, "go fast")
    nets: list[str] = option(["10.0.0.0/8"], "networks", metavar="CIDR")
    mode: str = option("a", "the mode", choices=("a", "b"))
    processes: int | None = option(None, "processes", aliases=("--processes_count",))
    spec: dict = option({}, "nested, YAML only", cli=False)


def run_demo(ws, cfg, runtime, *, overwrite=False):
    return {"cfg": cfg}


STAGE = Stage("demo", DemoConfig, run=run_demo, reads=("shards/",), writes=("filtered/",))


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    STAGE.add_arguments(p)
    return p.parse_args(list(argv))


def test_flags_are_derived_from_the_fields() -> None:
    args = parse("--subset", "x", "--shard-size", "5", "--no-blur", "--fast", "--nets", "a", "--nets", "b",
                 "--mode", "b", "--processes_count", "3", "--ratio", "0.25")
    cfg = STAGE.config_from({}, args)
    assert (cfg.subset, cfg.shard_size, cfg.blur, cfg.fast, cfg.nets, cfg.mode, cfg.processes, cfg.ratio) == \
        ("x", 5, False, True, ["a", "b"], "b", 3, 0.25)
    assert cfg.spec == {}


def test_yaml_section_then_flags_win() -> None:
    cfg = STAGE.config_from({"shard_size": 7, "blur": False, "mode": "b"}, parse("--shard-size", "9"))
    assert (cfg.shard_size, cfg.blur, cfg.mode) == (9, False, "b")
    assert STAGE.config_from({}, parse()).nets == ["10.0.0.0/8"]
    first, second = DemoConfig(), DemoConfig()
    first.nets.append("x")
    assert second.nets == ["10.0.0.0/8"]  # a mutable default is never shared


def test_nested_options_are_yaml_only() -> None:
    with pytest.raises(SystemExit):
        parse("--spec", "x")
    assert STAGE.config_from({"spec": {"a": 1}}).spec == {"a": 1}


def test_bad_values_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match="demo.shard_size: expected a number"):
        STAGE.config_from({"shard_size": "many"})
    with pytest.raises(ConfigError, match="unknown key"):
        STAGE.config_from({"shard_sise": 3})
    with pytest.raises(SystemExit):
        parse("--mode", "c")


def test_help_shows_defaults_once_written() -> None:
    p = argparse.ArgumentParser()
    STAGE.add_arguments(p)
    text = p.format_help()
    assert "samples per output shard (default: 10000)" in text
    assert "--no-blur" in text and "--processes_count" in text
