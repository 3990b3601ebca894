"""Run open_clip's own training entry point (``open_clip_train.main``) with poolsieve's model configs.

``python -m poolsieve.train.open_clip_runner [open_clip_train flags...]`` registers the model configs in
``core/model_configs`` (e.g. ``poolsieve-tiny``), makes webdataset's sample shuffle seeded, and
hands the flags to ``open_clip_train.main.main`` unchanged. It runs as a child process so that the
caller's torch and logging state (grad mode, root handlers) never leak into training.
"""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Sequence


def install_seeded_sample_shuffle(seed: int) -> None:
    """Make ``webdataset.shuffle`` draw from ``random.Random`` seeded by ``seed``.

    open_clip's webdataset pipeline seeds its shard sampling from ``--seed`` but calls
    ``wds.shuffle`` without a seed, so the sample order (and so the trained weights) would depend on
    the clock. Each pass through the data gets the next seed of a fixed sequence instead.
    """
    import webdataset as wds
    from webdataset.filters import _shuffle, pipelinefilter

    passes = itertools.count()

    def seeded_shuffle(data, bufsize=1000, initial=100, rng=None, seed=None, handler=None):  # noqa: ARG001
        return _shuffle(data, bufsize, initial, rng=random.Random(base_seed * 1_000_003 + next(passes)))

    base_seed = seed
    wds.shuffle = pipelinefilter(seeded_shuffle)


def fix_webdataset_eof_marker() -> None:
    """Let open_clip's tar reader skip webdataset's end-of-shard marker.

    webdataset >= 0.2.96 yields ``{}`` after each shard (``eof_value``); open_clip_train 3.3's
    ``group_by_keys_nothrow`` expects every item to have ``fname`` and fails with ``KeyError: 'fname'``
    (webdataset/webdataset#384, mlfoundations/open_clip#935). The fix named there: ``eof_value=None``.
    """
    import functools
    import inspect

    from open_clip_train import data
    from webdataset.tariterators import tar_file_expander

    if "eof_value" in inspect.signature(tar_file_expander).parameters:
        data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


def quiet_library_loggers() -> None:
    """open_clip's ``setup_logging`` sets every logger to INFO; keep torch's own loggers at WARNING."""
    import logging

    from open_clip_train import main as open_clip_main

    original = open_clip_main.setup_logging

    def setup_logging(log_file, level, include_host=False):
        original(log_file, level, include_host)
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch", "urllib3", "filelock", "PIL", "fsspec")):
                logging.getLogger(name).setLevel(logging.WARNING)

    open_clip_main.setup_logging = setup_logging


def seed_from_argv(argv: Sequence[str]) -> int:
    for i, arg in enumerate(argv):
        if arg == "--seed" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--seed="):
            return int(arg.split("=", 1)[1])
    return 0


def run(argv: Sequence[str]) -> int:
    """Call open_clip_train's main with ``argv``; 0 on success, 1 when it reports an error."""
    from open_clip_train.main import main

    from poolsieve.core.models import register_model_configs

    register_model_configs()
    fix_webdataset_eof_marker()
    quiet_library_loggers()
    install_seeded_sample_shuffle(seed_from_argv(argv))
    result = main(list(argv))
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
