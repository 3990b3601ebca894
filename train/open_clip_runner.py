"""Run open_clip's own training entry point (``open_clip_train.main``) with poolsieve's model configs.

``python -m poolsieve.train.open_clip_runner [open_clip_train flags...]`` registers the model configs in
``core/model_configs`` (e.g. ``poolsieve-tiny``), installs the patches below, and hands the flags to
``open_clip_train.main.main``. It runs as a child process (alone, under torchrun or srun, or inside a
Ray Train worker) so that the caller's torch and logging state never leak into training.

The patches, each small and named for what it fixes in open_clip_train 3.3:

- ``install_epoch_seeded_shuffle``: webdataset's sample shuffle (and the random augmentations of each
  data-loader worker) are seeded by (seed, rank, worker, epoch), so a run resumed at epoch k trains
  exactly as the uninterrupted run did from epoch k;
- ``install_atomic_checkpoints``: checkpoints are written to a temporary name and renamed, and read
  back with ``weights_only=True``; an unreadable one ends the run with one line;
- ``install_rank_shards``: with several processes, each samples (with replacement, as DataComp does)
  from its own ``rank::world_size`` slice of the shards, so ranks read disjoint shards;
- ``install_cpu_ddp``: several CPU processes (gloo) train with DDP as they do on GPUs;
- ``install_shard_log``: with ``POOLSIEVE_SHARD_LOG=DIR``, each process lists the shards it reads.

Before any of them, ``core.safe_decoding.install_safe_decoding`` makes open_clip's webdataset decoder
safe: no shard member is ever unpickled.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.models import register_model_configs
from poolsieve.core.safe_decoding import install_safe_decoding

from .checkpoints import atomic_save
from .shards import DATA_FILE_FLAG

ERROR_PREFIX = "POOLSIEVE-ERROR: "  # a line the parent reports as the run's one-line error
_epochs: list[Any] = []  # the SharedEpoch of the dataset being built (captured by the shuffle stage)


def _worker_identity() -> tuple[int, int]:
    from webdataset.utils import pytorch_worker_info

    rank, _, worker, _ = pytorch_worker_info()
    return rank, worker


def install_epoch_seeded_shuffle(seed: int) -> None:
    """Seed each pass of webdataset's sample shuffle, and the worker's RNGs, from (seed, rank, worker, epoch).

    open_clip calls ``wds.shuffle`` unseeded and seeds its workers once, so both the sample order
    and the augmentations of epoch k depend on everything drawn before it (and on the clock). Here
    a pass reads the epoch from the dataset's shared epoch counter (what open_clip's shard sampler
    reads too), so it depends on nothing else: a resumed run repeats it bit for bit.
    """
    import torch
    import webdataset as wds
    from open_clip_train import data
    from webdataset.filters import _shuffle

    class CapturedEpoch(data.SharedEpoch):
        def __init__(self, epoch: int = 0):
            super().__init__(epoch)
            _epochs.append(self)

    def shuffle(bufsize: int = 1000, initial: int = 100, **_: Any):
        epoch = _epochs[-1] if _epochs else None

        def stage(src):
            rank, worker = _worker_identity()
            e = epoch.get_value() if epoch is not None else 0
            rng = random.Random(f"poolsieve-shuffle-{seed}-{rank}-{worker}-{e}")
            torch.manual_seed(rng.getrandbits(63))
            random.seed(rng.getrandbits(63))
            np.random.seed(rng.getrandbits(32))
            return _shuffle(src, bufsize, initial, rng=rng)

        return stage

    data.SharedEpoch = CapturedEpoch
    wds.shuffle = shuffle


class RunnerError(SystemExit):
    """The runner's one-line error (the parent prints ``message``, never a traceback)."""

    def __init__(self, message: str):
        super().__init__(3)
        self.message = message


def _fail(message: str) -> None:
    print(ERROR_PREFIX + message, flush=True)
    raise RunnerError(message)


def install_atomic_checkpoints() -> None:
    """open_clip's ``torch.save`` writes through a temporary file; its checkpoint loads are weights-only."""
    import torch
    from open_clip_train import main as open_clip_main

    class TorchWithAtomicSave:
        save = staticmethod(atomic_save)

        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

    def pt_load(file_path: str, map_location: Any = None) -> Any:
        try:
            return torch.load(file_path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - one line for any unreadable checkpoint
            _fail(f"{file_path}: cannot resume from this checkpoint ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else 'unreadable'})")

    open_clip_main.torch = TorchWithAtomicSave()
    open_clip_main.pt_load = pt_load


def install_rank_shards() -> None:
    """Under torch.distributed, each rank resamples from its own ``rank::world_size`` slice of the shards."""
    from open_clip_train import data

    base = data.ResampledShards2

    class RankShards(base):
        def __init__(self, urls, weights=None, *args: Any, **kwargs: Any):
            super().__init__(urls, weights, *args, **kwargs)
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                rank, world = dist.get_rank(), dist.get_world_size()
                if len(self.urls) < world:
                    _fail(f"{len(self.urls)} shards cannot be split over {world} training processes")
                self.urls = self.urls[rank::world]
                if self.weights is not None:
                    self.weights = self.weights[rank::world]

    data.ResampledShards2 = RankShards


def install_shard_log(folder: str) -> None:
    """Append each shard a process opens to ``folder/rank<R>-worker<W>.txt`` (for tests and audits)."""
    from open_clip_train import data

    base = data.ResampledShards2

    class LoggedShards(base):
        def __iter__(self):
            rank, worker = _worker_identity()
            with open(Path(folder) / f"rank{rank}-worker{worker}.txt", "a") as log:
                for item in super().__iter__():
                    log.write(item["url"] + "\n")
                    log.flush()
                    yield item

    data.ResampledShards2 = LoggedShards


def install_cpu_ddp() -> None:
    """open_clip wraps its model as ``DDP(model, device_ids=[device])``, which torch refuses for a CPU
    device; on CPUs (gloo) DDP is made without ``device_ids``, as torch asks."""
    import torch

    base = torch.nn.parallel.DistributedDataParallel

    class CpuFriendlyDDP(base):
        def __init__(self, module: Any, device_ids: Any = None, *args: Any, **kwargs: Any):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuFriendlyDDP


def adopt_process_group() -> None:
    """Inside Ray Train the process group exists already: open_clip's own init becomes a no-op."""
    import torch.distributed as dist

    original = dist.init_process_group

    def init_process_group(*args: Any, **kwargs: Any) -> None:
        if not dist.is_initialized():
            original(*args, **kwargs)

    dist.init_process_group = init_process_group


def fix_webdataset_eof_marker() -> None:
    """Let open_clip's tar reader skip webdataset's end-of-shard marker.

    webdataset >= 0.2.96 yields ``{}`` after each shard (``eof_value``); open_clip_train 3.3's
    ``group_by_keys_nothrow`` expects every item to have ``fname`` and fails with ``KeyError: 'fname'``
    (webdataset/webdataset#384, mlfoundations/open_clip#935). The fix named there: ``eof_value=None``.
    """
    from open_clip_train import data
    from webdataset.tariterators import tar_file_expander

    if "eof_value" in inspect.signature(tar_file_expander).parameters:
        data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


def quiet_library_loggers() -> None:
    """open_clip's ``setup_logging`` sets every logger to INFO; keep torch's own loggers at WARNING."""
    from open_clip_train import main as open_clip_main

    original = open_clip_main.setup_logging

    def setup_logging(log_file, level, include_host=False):
        original(log_file, level, include_host)
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch", "urllib3", "filelock", "PIL", "fsspec")):
                logging.getLogger(name).setLevel(logging.WARNING)

    open_clip_main.setup_logging = setup_logging


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def seed_from_argv(argv: Sequence[str]) -> int:
    return int(flag_value(argv, "--seed") or 0)


def expand_data_file(argv: Sequence[str]) -> list[str]:
    """Swap ``--poolsieve-train-data-file F`` for ``--train-data`` (and its factors) read from ``F``."""
    argv = list(argv)
    if DATA_FILE_FLAG not in argv:
        return argv
    i = argv.index(DATA_FILE_FLAG)
    path = Path(argv[i + 1])
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        _fail(f"{path}: cannot read the shard list ({e.strerror})")
    extra = ["--train-data", lines[0]] + (["--train-data-upsampling-factors", lines[1]] if len(lines) > 1 else [])
    return argv[:i] + extra + argv[i + 2:]


def run(argv: Sequence[str]) -> int:
    """Call open_clip_train's main with ``argv``; 0 on success, 1 when it reports an error."""
    from open_clip_train.main import main

    argv = expand_data_file(argv)
    register_model_configs()
    install_safe_decoding()  # no shard member is unpickled or torch.load-ed while data loads
    fix_webdataset_eof_marker()
    quiet_library_loggers()
    install_epoch_seeded_shuffle(seed_from_argv(argv))
    install_atomic_checkpoints()
    install_rank_shards()
    install_cpu_ddp()
    if os.environ.get("POOLSIEVE_SHARD_LOG"):
        install_shard_log(os.environ["POOLSIEVE_SHARD_LOG"])
    result = main(list(argv))
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
