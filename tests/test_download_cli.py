"""The download stage's options: img2dataset's and DataComp's command lines parse into the same config."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolsieve.core.errors import ConfigError
from poolsieve.pipeline.cli import make_context, stage_parser
from poolsieve.pipeline.download.plan import FilePlan, idle_workers_notice
from poolsieve.pipeline.download.stage import STAGE, DownloadConfig


def config_of(*argv: str, ws: Path) -> DownloadConfig:
    args = stage_parser("download").parse_args(["-w", str(ws), "--executor", "local", *argv])
    return STAGE.config_from(make_context(args).section("download"), args)


def test_img2dataset_spellings(tmp_path: Path) -> None:
    cfg = config_of("--processes_count", "16", "--thread_count", "128", "--image_size", "256",
                    "--resize_mode", "center_crop", "--number_sample_per_shard", "500", "--retries", "5",
                    "--timeout", "3", "--encode_quality", "80", "--encode_format", "webp", "--min_image_size", "64",
                    "--max_image_area", "1000000", "--no-resize_only_if_bigger", "--max_shard_retry", "3",
                    "--user_agent_token", "poolsieve-test", ws=tmp_path)
    assert (cfg.processes, cfg.threads, cfg.image_size, cfg.resize_mode, cfg.samples_per_shard) == \
        (16, 128, 256, "center_crop", 500)
    assert (cfg.retries, cfg.timeout, cfg.encode_quality, cfg.encode_format, cfg.min_image_size) == \
        (5, 3.0, 80, "webp", 64)
    assert (cfg.max_image_area, cfg.resize_only_if_bigger, cfg.max_shard_retry, cfg.user_agent_token) == \
        (1_000_000.0, False, 3, "poolsieve-test")
    cfg.validate()


def test_datacomp_download_upstream_spellings(tmp_path: Path) -> None:
    cfg = config_of("--scale", "medium", "--metadata_dir", str(tmp_path / "meta"), "--download_npz", "--skip_shards",
                    "--skip_bbox_blurring", "--processes_count", "4", "--thread_count", "64", ws=tmp_path)
    assert (cfg.scale, cfg.metadata_source, cfg.download_npz, cfg.skip_shards, cfg.blur_faces) == \
        ("medium", str(tmp_path / "meta"), True, True, False)
    assert (cfg.processes, cfg.threads) == (4, 64)
    # and poolsieve's own spellings give the same config
    ours = config_of("--scale", "medium", "--metadata-source", str(tmp_path / "meta"), "--download-npz",
                     "--skip-shards", "--no-blur-faces", "--processes", "4", "--threads", "64", ws=tmp_path)
    assert ours == cfg


def test_defaults_and_yaml_section(tmp_path: Path) -> None:
    assert config_of(ws=tmp_path) == DownloadConfig()  # DataComp's settings unless told otherwise
    assert (DownloadConfig().image_size, DownloadConfig().samples_per_shard, DownloadConfig().blur_faces) == \
        (512, 10_000, True)
    config = tmp_path / "c.yaml"
    config.write_text("download: {thread_count: 3}\n")
    args = stage_parser("download").parse_args(["-w", str(tmp_path), "-c", str(config)])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) thread_count"):  # YAML keys: the field names only
        STAGE.config_from(make_context(args).section("download"), args)


def test_help_lists_each_option_once(capsys) -> None:
    from poolsieve.pipeline.cli import main

    with pytest.raises(SystemExit):
        main(["download", "--help"])
    out = capsys.readouterr().out
    for flag in ("--threads", "--allow-network", "--deny-network", "--blur-faces", "--image-size"):
        assert out.count(f"  {flag}") == 1, flag
    assert "--thread_count" in out and "--skip_bbox_blurring" in out and "(default: 10000)" in out


def test_a_small_pool_names_the_shard_size_that_feeds_every_worker(tmp_path: Path) -> None:
    """Fewer shards than download processes: one line saying how many would idle and the size that feeds all."""
    plans = [FilePlan(tmp_path / "a.parquet", 8_460, 0, 1)]
    notice = idle_workers_notice(plans, 10_000, 8)
    assert "8,460 rows make 1 shard " in notice and "7 of them have nothing to do" in notice
    assert "--samples-per-shard 1,058" in notice  # ceil(8460 / 8): 8 shards of at most 1,058
    assert idle_workers_notice([FilePlan(tmp_path / "a.parquet", 8_460, 0, 8)], 1_058, 8) is None  # 8 shards now
    two = [FilePlan(tmp_path / "a.parquet", 5_000, 0, 1), FilePlan(tmp_path / "b.parquet", 5_000, 1, 1)]
    assert idle_workers_notice(two, 10_000, 2) is None  # one shard per worker
    assert idle_workers_notice([FilePlan(tmp_path / "a.parquet", 3, 0, 1)], 10_000, 8) is None  # fewer rows than workers
