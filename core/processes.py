"""Child processes that never outlive their parent: the one die-with-parent helper."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``); no-op elsewhere.

    Call it in the child (a worker, a ``preexec_fn``): a killed stage then leaves no orphan still writing.
    """
    if not sys.platform.startswith("linux"):
        return

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig))  # 1 = PR_SET_PDEATHSIG
