"""The command's log file: what libraries print goes there, not to the user's terminal.

The terminal shows poolsieve's own output only: progress, summaries, one-line errors and warnings
(``PoolsieveWarning``). While ``capture(path)`` is active (the CLI opens it for every command that
has a workspace, at ``<workspace>/logs/<command>.log``), everything else goes to that file:

* log records of every library (Ray's start-up and token-authentication banners, the Hugging Face
  hub's per-retry warnings, open_clip's notes, ...): a handler on the root logger, which also takes
  the place of the libraries' own terminal handlers (Ray's, datasets', ...) for the command;
* warnings other than poolsieve's own (webdataset's, torch's, ...);
* the output of Ray's workers that Ray forwards to this process (``route_ray_output``), without its
  colour codes; a ``PoolsieveWarning`` raised in a worker still reaches the terminal as one line;
* whatever a library prints inside a ``library_output()`` block (clip_benchmark's progress bars), so
  that it does not interleave with poolsieve's progress.

The file is opened when the first line is written: a command that logs nothing leaves no file.
Each command appends a ``==== <time> <command line>`` line, then its lines.
Without ``capture`` (poolsieve used as a library) nothing is redirected.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .errors import PoolsieveWarning
from .progress import print_line

_RAY_HANDLER = "poolsieve_stage_log"
_WORKER_WARNING = re.compile(r"\bPoolsieveWarning: (.*)$")


class StageLog:
    """A text file opened on first write (``header`` first), appended to, safe to write from several
    threads. It never creates the workspace: until the folder above ``logs/`` exists, lines wait in
    memory (a command that fails before it exists leaves nothing behind)."""

    MAX_PENDING = 1 << 20

    def __init__(self, path: Path, terminal: TextIO, header: str = ""):
        self.path = path
        self.terminal = terminal  # where poolsieve's own messages go while libraries write here
        self.handler = _Handler(logging.INFO)  # on the root logger and on each logger claimed
        self.claimed: list[tuple[logging.Logger, logging.Handler]] = []  # terminal handlers taken off
        self.fed: list[logging.Logger] = []  # loggers given ``handler`` in their place
        self._file: TextIO | None = None
        self._pending = [header] if header else []
        self._lock = threading.Lock()
        self.warned: set[str] = set()  # poolsieve's warning lines shown: each once per command

    def first_warning(self, line: str) -> bool:
        """Whether this command has not shown the warning ``line`` yet (a notice that every Ray worker
        raises shows once)."""
        with self._lock:
            new = line not in self.warned
            self.warned.add(line)
        return new

    def write(self, text: str) -> int:
        if not text:
            return 0
        with self._lock:
            if self._file is None:
                if not self.path.parent.parent.is_dir():
                    if sum(map(len, self._pending)) < self.MAX_PENDING:
                        self._pending.append(text)
                    return len(text)
                self.path.parent.mkdir(exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
                self._file.write("".join(self._pending))
                self._pending.clear()
            self._file.write(text)
            self._file.flush()
        return len(text)

    def flush(self) -> None:
        pass  # every write is flushed

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


_active: StageLog | None = None  # the log of the running command


class _Handler(logging.Handler):
    """Writes every record it gets into the active log, once (it may sit on a logger and its parent)."""

    _last: logging.LogRecord | None = None

    def emit(self, record: logging.LogRecord) -> None:
        log = _active
        if log is None or record is self._last:
            return
        self._last = record
        try:
            log.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def _writes_to_terminal(h: logging.Handler, log: StageLog) -> bool:
    if not isinstance(h, logging.StreamHandler) or isinstance(h, (logging.FileHandler, _Handler)):
        return False
    stream = getattr(h, "stream", None)
    if getattr(stream, "closed", False):  # bound to a stream since closed (a replaced stderr): only errors
        return True
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, log.terminal, log)
    return any(stream is s for s in streams if s is not None)


def _claim(log: StageLog, logger: logging.Logger) -> None:
    """Take ``logger``'s terminal handlers off it for the command (Ray's ``PlainRayHandler``,
    huggingface_hub's and datasets' ``StreamHandler``) and give it the log's handler instead."""
    for h in list(logger.handlers):
        if _writes_to_terminal(h, log):
            logging.Logger.removeHandler(logger, h)
            log.claimed.append((logger, h))
            if log.handler not in logger.handlers:  # (Ray's logger does not propagate)
                logging.Logger.addHandler(logger, log.handler)
                log.fed.append(logger)


class _ClaimingLogger(logging.Logger):
    """The class of loggers made during a command: a terminal handler that a library imported later
    (Ray, huggingface_hub) adds to one is taken off at once."""

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 - logging's name
        super().addHandler(hdlr)
        if _active is not None:
            _claim(_active, self)


@contextlib.contextmanager
def capture(path: Path | None, title: str = "") -> Iterator[StageLog | None]:
    """Send library output to ``path`` for the block (nothing changes when ``path`` is None)."""
    global _active
    if path is None or _active is not None:
        yield _active
        return

    log = StageLog(Path(path), sys.stderr, f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {title or 'poolsieve'}\n")
    root = logging.getLogger()
    log.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = root.level, warnings.showwarning, logging.getLoggerClass()

    def showwarning(message: Any, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, PoolsieveWarning):  # the CLI's one-line format, above any progress bar
            text = warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n")
            if log.first_warning(text):
                print_line(text, file or log.terminal)
        else:
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

    _active = log
    root.addHandler(log.handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for logger in [root, *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            _claim(log, logger)
    if saved[2] is logging.Logger:
        logging.setLoggerClass(_ClaimingLogger)
    warnings.showwarning = showwarning
    try:
        yield log
    finally:
        warnings.showwarning = saved[1]
        logging.setLoggerClass(saved[2])
        for logger in log.fed:
            logging.Logger.removeHandler(logger, log.handler)
        for logger, h in log.claimed:
            logging.Logger.addHandler(logger, h)
        root.removeHandler(log.handler)
        root.setLevel(saved[0])
        _active = None
        log.close()


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """What a library prints in the block (progress bars, notes) goes to the command's log, if any."""
    log = _active
    if log is None:
        yield
        return
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # type: ignore[type-var]
        yield


# ------------------------------------------------------------------------------ Ray's workers
def route_ray_output() -> None:
    """Ray's workers' output, forwarded to this driver, goes to the command's log (without Ray's colour
    codes) instead of the terminal; without a log, Ray prints it as it would. Call after ``ray.init``
    (it re-registers Ray's printer at every start)."""
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray without these internals: its own printing stays
        return
    if not any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
        return  # log_to_driver is off
    ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler(_RAY_HANDLER)
    dispatcher.add_handler(_RAY_HANDLER, lambda data: _ray_lines(data, ray_worker, ignore_prefix))


def _ray_lines(data: dict[str, Any], ray_worker: Any, ignore_prefix: bool) -> None:
    log = _active
    if log is None:
        ray_worker.print_to_stdstream(data, ignore_prefix=ignore_prefix)
        return
    who = data.get("actor_name") or data.get("task_name") or ""
    ip = data.get("ip")
    where = f", ip={ip}" if ip and ip != data.get("localhost") else ""  # another node's, as Ray writes it
    prefix = f"({who + ' ' if who else ''}pid={data.get('pid')}{where}) "
    lines = [str(line) for line in data.get("lines", [])]
    if data.get("pid") == "autoscaler":  # its event summaries only, as Ray itself prints them
        lines = list(ray_worker.filter_autoscaler_events(lines))
    log.write("".join(prefix + line + "\n" for line in lines))
    for line in lines:
        m = _WORKER_WARNING.search(line)
        if m and log.first_warning(text := f"poolsieve: warning: {m.group(1)}"):
            print_line(text, log.terminal)
