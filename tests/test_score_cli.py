"""The score stage's options: the flags users type parse into the config, each option shown once in --help."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolsieve.core.errors import ConfigError
from poolsieve.pipeline.cli import main, make_context, stage_parser
from poolsieve.pipeline.score.stage import STAGE, ScoreConfig


def config_of(*argv: str, ws: Path, yaml: str | None = None) -> ScoreConfig:
    extra = []
    if yaml is not None:
        (ws / "c.yaml").write_text(yaml)
        extra = ["-c", str(ws / "c.yaml")]
    args = stage_parser("score").parse_args(["-w", str(ws), "--executor", "local", *extra, *argv])
    return STAGE.config_from(make_context(args).section("score"), args)


def test_flags(tmp_path: Path) -> None:
    cfg = config_of("--model", "ViT-B-32:openai", "-m", "l14=ViT-L-14:/ckpt.pt", "--no-language", "--shard", "00001",
                    "--shard", "00003", "--decode", "gpu", "--batch-size", "512", "--precision", "fp16",
                    "--trust-checkpoint", ws=tmp_path)
    assert cfg.models == ["ViT-B-32:openai", "l14=ViT-L-14:/ckpt.pt"] and cfg.language is False
    assert (cfg.shards, cfg.decode, cfg.batch_size, cfg.precision, cfg.trust_checkpoint) == \
        (["00001", "00003"], "gpu", 512, "fp16", True)
    ref = config_of("--reference", "refs", "--name", "imagenet", ws=tmp_path)
    assert (ref.reference, ref.reference_name) == ("refs", "imagenet")
    imp = config_of("--import-datacomp", "dc", "--drop-duplicate-uids", ws=tmp_path)
    assert (imp.import_datacomp, imp.drop_duplicate_uids) == ("dc", True)
    assert config_of(ws=tmp_path) == ScoreConfig() and ScoreConfig().models == ["ViT-B-32:openai"]


def test_yaml_section_and_flags(tmp_path: Path) -> None:
    yaml = "score: {models: [{arch: ViT-B-32, pretrained: openai, key: b32}], batch_size: 32}\n"
    cfg = config_of("--batch-size", "8", ws=tmp_path, yaml=yaml)
    assert cfg.models == [{"arch": "ViT-B-32", "pretrained": "openai", "key": "b32"}] and cfg.batch_size == 8
    with pytest.raises(ConfigError, match=r"score\.batch_size: expected a number"):
        config_of(ws=tmp_path, yaml="score: {batch_size: many}\n")


def test_reference_without_name_is_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "ws").mkdir()
    assert main(["score", "-w", str(tmp_path / "ws"), "--executor", "local", "--reference", str(tmp_path)]) == 2
    assert "--reference needs --name NAME" in capsys.readouterr().err


def test_help_lists_each_option_once(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--language", "--shard", "--reference", "--import-datacomp", "--batch-size"):
        assert out.count(f" {flag} ") + out.count(f" {flag},") == 1, flag
    assert "(default: ViT-B-32:openai)" in " ".join(out.split()) and "--no-language" in out
