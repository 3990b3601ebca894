"""The launchers' own logic, in this process: the runner's shard-list file, following a run's progress
from open_clip's log (as the Ray Train launcher does), the SLURM script file. Training itself is in the
``train``-marked tests."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from poolsieve.core.progress import Progress
from poolsieve.train.budget import TrainingPlan
from poolsieve.train.launch import _follow, write_slurm_script
from poolsieve.train.open_clip_runner import ERROR_PREFIX, RunnerError, expand_data_file, seed_from_argv
from poolsieve.train.shards import DATA_FILE_FLAG


def test_runner_reads_a_long_shard_list_from_its_file(tmp_path: Path, capsys) -> None:
    listed = tmp_path / "train_data.txt"
    listed.write_text("/d/{00000000..00009999}.tar::/e/a.tar\n1::2\n")
    argv = ["--epochs", "2", DATA_FILE_FLAG, str(listed), "--seed", "5"]
    assert expand_data_file(argv) == ["--epochs", "2", "--train-data", "/d/{00000000..00009999}.tar::/e/a.tar",
                                      "--train-data-upsampling-factors", "1::2", "--seed", "5"]
    assert expand_data_file(["--train-data", "x.tar"]) == ["--train-data", "x.tar"]
    assert seed_from_argv(argv) == 5 and seed_from_argv([]) == 0
    with pytest.raises(RunnerError) as error:
        expand_data_file([DATA_FILE_FLAG, str(tmp_path / "gone.txt")])
    assert error.value.message.startswith(f"{tmp_path / 'gone.txt'}: cannot read the shard list")
    assert capsys.readouterr().out.startswith(ERROR_PREFIX)  # the line the parent reports


def test_progress_follows_open_clips_log_as_rank_0_writes_it(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    plan = TrainingPlan(epochs=2, steps_per_epoch=4, batch_size=32, per_process_batch=16, world_size=2)
    progress = Progress("train", total=8, unit="steps", stream=io.StringIO())
    progress.update(2)  # two steps done before a resume, as train_clip counts them
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(log, plan, progress, 2, stop))
    follower.start()
    try:
        with open(log, "a") as f:
            for line in ("INFO | Start epoch 0", "Train Epoch: 0 [64/128 (50%)] Loss: 3.1 (3.2)",
                         "Train Epoch: 1 [128/128 (100%)] Contrastive_loss: 2.0 (2.1)"):
                f.write(line + "\n")
                f.flush()
        deadline = time.monotonic() + 30
        while progress.done < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        follower.join(timeout=10)
    assert progress.done == 8  # epoch 0's line (step 2) adds nothing; epoch 1's last batch: 1 x 4 + 128 / 32


def test_slurm_script_is_written_whole_and_executable(tmp_path: Path) -> None:
    path = write_slurm_script(tmp_path / "job.sh", "#!/bin/bash\necho hi\n")
    assert path.read_text() == "#!/bin/bash\necho hi\n" and os.access(path, os.X_OK)
    assert [p.name for p in tmp_path.iterdir()] == ["job.sh"]  # no temporary file left
