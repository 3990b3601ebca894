"""Reshard's two passes overlapped: scans never wait for writes, and writes start as soon as they can.

A feeder thread runs pass 1 (``Runtime.ordered_map`` over the pool shards, results in pool order), hands
each scan to the planner and puts the output shards it completes on a bounded queue; the calling thread
writes them (``Runtime.stream``). So the scans keep the disk reading while shards are written (on Ray:
scan and write tasks side by side; in-process: a scan and a write at once, in two threads), and the
last output shard starts the moment the last scan is in. The queue bounds how far scans run ahead. A
failure on either side stops both: the feeder stops between scans and its Ray tasks are cancelled.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from poolsieve.core.progress import Progress
from poolsieve.core.runtime import Runtime
from poolsieve.pipeline.reshard.plan import OutputPlanner, WriteUnit
from poolsieve.pipeline.reshard.scan import ScanUnit, ShardScan, scan_shard
from poolsieve.pipeline.reshard.write import write_shard

_DONE = object()


class _Feeder(threading.Thread):
    """Pass 1 and the planner, in a thread: output shards to write go on ``units`` (then ``_DONE``, or the
    exception that ended the scans)."""

    def __init__(self, runtime: Runtime, scan_units: list[ScanUnit], planner: OutputPlanner,
                 on_scan: Callable[[int, ShardScan], None], ahead: int):
        super().__init__(name="reshard-scans", daemon=True)
        self.runtime, self.scan_units, self.planner, self.on_scan = runtime, scan_units, planner, on_scan
        self.units: queue.Queue = queue.Queue(maxsize=ahead)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            scans = self.runtime.ordered_map(scan_shard, self.scan_units, max_in_flight=self.runtime.cpus())
            with contextlib.closing(scans):
                for i, scan in enumerate(scans):
                    if self.stop.is_set():
                        return
                    self.on_scan(i, scan)
                    last = i + 1 == len(self.scan_units)
                    for unit in self.planner.add(scan) + (self.planner.finish() if last else []):
                        self._put(unit)
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the writing thread, which raises it
            self._put(e)

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                self.units.put(item, timeout=0.2)
                return

    def __iter__(self) -> Iterator[WriteUnit]:
        while True:
            item = self.units.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def run_units(runtime: Runtime, scan_units: list[ScanUnit], planner: OutputPlanner,
              on_scan: Callable[[int, ShardScan], None], submitted: list[WriteUnit]) -> tuple[list[dict], int]:
    """Scan every pool shard and write every output shard not already whole; return the writes' results and
    the count of output shards found whole (a resumed run). ``submitted`` lists the units handed to writers."""
    cpus = runtime.cpus()
    scan_progress = Progress("reshard scan", total=len(scan_units), unit="shards")
    write_progress = Progress("reshard write", total=None, unit="shards")
    skipped = 0

    def scanned(i: int, scan: ShardScan) -> None:
        on_scan(i, scan)
        scan_progress.update(1, scan.samples)

    feeder = _Feeder(runtime, scan_units, planner, scanned, ahead=cpus + 1)  # scanned, not yet written: bounded

    def to_write() -> Iterator[WriteUnit]:
        nonlocal skipped
        for unit in feeder:
            if Path(unit.tar_path).exists() and Path(unit.stats_path).exists():
                skipped += 1
            else:
                submitted.append(unit)
                yield unit

    results = []
    feeder.start()
    try:
        with contextlib.closing(to_write()) as units:
            for _, result in runtime.stream(write_shard, units, max_in_flight=cpus + 1):
                results.append(result)
                write_progress.update(1, result["samples"])
    finally:
        feeder.stop.set()
        feeder.join()
    if results:
        write_progress.close()
    return results, skipped
