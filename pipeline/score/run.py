"""One score job at work: reader tasks hand prepared chunks to encoder workers, a writer thread writes.

``ScoreRun`` holds what the run shares: each shard's state (chunks handed out, chunks back, read to the
end, failed), the counts the stall watch reports, the writer and the progress line. Readers
(``prepare.read_chunks``, one streaming task per shard) hand decoded chunks to encoder workers
(``encode.EncoderActor``, one per GPU or one on CPUs); once every chunk of a shard is back, the writer
thread writes it (``write.py``), so writes never stall the encoders. ``--executor local`` does the same,
one chunk at a time in this process. ``RunStats`` adds up what every job did, for the summary.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poolsieve.core.formats import MAX_CAPTION_BYTES, MAX_IMAGE_BYTES
from poolsieve.core.progress import Progress
from poolsieve.core.runtime import END, Runtime
from poolsieve.core.stall import StallWatch
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.score.encode import EncoderActor
from poolsieve.pipeline.score.plan import ScoreJob, model_record, plan_resources
from poolsieve.pipeline.score.prepare import ShardFailure, read_chunks
from poolsieve.pipeline.score.write import add_to_shard, write_shard


@dataclass
class RunStats:
    """What a score run did, over all its jobs."""

    total_shards: int = 0
    skipped: int = 0
    scored: int = 0
    added: dict[str, int] = field(default_factory=dict)  # model key -> scored shards it was added to
    samples: int = 0
    decode_errors: int = 0
    too_large: int = 0
    captions_cut: int = 0
    encode_seconds: float = 0.0
    seconds: float = 0.0
    device: str = ""
    batch_size: int = 0
    threads: int = 0
    errors: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, written: dict[str, Any]) -> None:
        if written.get("added"):
            for key in written["added"]:
                self.added[key] = self.added.get(key, 0) + 1
        else:
            self.scored += 1
            self.decode_errors += written["decode_errors"]
            self.too_large += written["too_large"]
            self.captions_cut += written["captions_cut"]
        self.samples += written["rows"]
        self.encode_seconds += written["encode_seconds"]

    def summary(self, ws: Workspace, models: Sequence[Any]) -> dict[str, Any]:
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        return {
            "mode": "score",
            "shards": self.total_shards,
            "scored now": self.scored,
            "models added to scored shards": ", ".join(f"{k} ({n} shard(s))" for k, n in self.added.items()) or "-",
            "already scored (skipped)": self.skipped,
            "failed shards": len(self.errors),
            "samples": self.samples,
            "decode errors": self.decode_errors,
            f"images over {MAX_IMAGE_BYTES >> 20} MiB (too_large, not read)": self.too_large,
            f"captions cut to {MAX_CAPTION_BYTES >> 10} KiB": self.captions_cut,
            "models": ", ".join(f"{m.key}={m.spec.arch}:{m.spec.pretrained or 'random'}" for m in models),
            "device": self.device or "-",
            "encoder threads": self.threads if self.device == "cpu" else "-",
            "batch size": self.batch_size or "-",
            "elapsed s": round(self.seconds, 2),
            "images/s": round(rate, 1),
            "output": str(ws.scores_dir),
            "failed_shards": [str(p) for p, _ in self.errors],
        }


@dataclass
class ShardState:
    """One shard in flight: its encoded chunks by index, how many were handed out, whether all were."""

    tar: Path
    chunks: dict[int, Any] = field(default_factory=dict)
    dispatched: int = 0
    decoded_all: bool = False
    failed: bool = False


class ScoreRun:
    """One ``ScoreJob`` run to its end (``execute``): its shards read, encoded and written."""

    def __init__(self, ws: Workspace, job: ScoreJob, config: Any, runtime: Runtime, stats: RunStats,
                 quiet: bool = False):
        self.ws, self.job, self.config, self.runtime, self.stats = ws, job, config, runtime, stats
        self.quiet = quiet
        self.res = plan_resources(config, runtime.resources(),
                                  "the Ray cluster" if runtime.executor == "ray" else "this machine")
        self.states = {t: ShardState(t) for t in job.tars}
        self.started = False
        self.reading = self.at_encoders = self.writing = 0  # reader tasks, chunks at the encoders, shards
        self.watch = StallWatch("score", self.waiting_for)
        self.writes: deque[Future] = deque()
        self.writer: ThreadPoolExecutor | None = None
        self.progress: Progress | None = None
        self.dims: dict[str, int] = {}
        self.records = {m.key: model_record(ws, m) for m in job.models}

    def execute(self) -> None:
        """Start the encoders, stream every shard through them, and write each shard once it is whole."""
        res, config = self.res, self.config
        with self.watch, self.runtime.actor_pool(
                EncoderActor, res.encoders, self.job.models, res.device, config.precision, config.batch_size,
                config.threads, config.decode, config.chunk_size, config.language and not self.job.adding,
                num_cpus=res.encoder_cpus, num_gpus=1 if res.use_gpu else 0) as pool:
            info = pool.call_all("setup")[0]
            self._started(info)
            self.writer = ThreadPoolExecutor(1, thread_name_prefix="score-writer")
            try:
                for (state, index), encoded in pool.stream("encode", self._chunks(info["plan"]), per_worker=3):
                    self._encoded(state, index, encoded)
                while self.writes:
                    self._collect(self.writes.popleft())
            finally:
                self.writer.shutdown(wait=True)
                self.progress.close()

    def waiting_for(self) -> str:
        """What the run waits for, for the stall watch."""
        res, parts = self.res, []
        if not self.started:
            parts.append(f"{res.encoders} encoder worker(s) to start and load "
                         f"{', '.join(m.key for m in self.job.models)} "
                         f"({res.encoder_cpus:g} CPU{', 1 GPU' if res.use_gpu else ''} each)")
        else:
            parts.append(f"{self.reading} reader task(s) pending or running ({res.reader_cpus:g} CPU each)")
            parts.append(f"{self.at_encoders} chunk(s) at the encoder(s)")
            parts.append(f"{self.writing} shard(s) being written")
        if self.runtime.executor == "ray":
            import ray

            free = ray.available_resources()
            parts.append(f"Ray: {free.get('CPU', 0):g} of {res.cpus:g} CPU free"
                         + (f", {free.get('GPU', 0):g} GPU free" if res.use_gpu else ""))
        return "; ".join(parts)

    def _started(self, info: dict[str, Any]) -> None:
        """The encoders are up: note what they chose and open the progress line."""
        self.started = True
        self.watch.tick()
        self.stats.device, self.stats.batch_size, self.stats.threads = info["device"], info["batch_size"], info["threads"]
        self.dims = info["dims"]
        what = "add " + ", ".join(self.dims) if self.job.adding else "score"
        self.progress = Progress(what, total=len(self.job.tars), unit="shards", quiet=self.quiet)

    def _units(self) -> Iterator[Path]:
        for t in self.job.tars:
            self.reading += 1
            yield t

    def _chunks(self, plan: Any) -> Iterator[tuple[tuple[ShardState, int], Any]]:
        """(shard, chunk index), chunk: as the readers hand them over; a shard is marked read at its end."""
        read = functools.partial(read_chunks, plan=plan)
        for tar, item in self.runtime.stream_generators(read, self._units(), max_in_flight=self.res.readers,
                                                        num_cpus=self.res.reader_cpus):
            self.watch.tick()
            state = self.states[tar]
            if item is END:
                self.reading -= 1
                state.decoded_all = True
                self._finish_if_done(state)
            elif not state.failed:
                state.dispatched += 1
                self.at_encoders += 1
                yield (state, state.dispatched - 1), item

    def _encoded(self, state: ShardState, index: int, encoded: Any) -> None:
        """A chunk is back from an encoder: keep it, or fail its shard."""
        self.at_encoders -= 1
        self.watch.tick()
        if state.failed:
            return
        if isinstance(encoded, ShardFailure):
            state.failed = True
            state.chunks.clear()
            self.stats.errors.append((state.tar, encoded.problem))
            self.progress.update(1)
            return
        state.chunks[index] = encoded
        self._finish_if_done(state)

    def _finish_if_done(self, state: ShardState) -> None:
        """Hand a shard whose chunks are all back to the writer; collect the writes already done."""
        if state.failed or not state.decoded_all or len(state.chunks) < state.dispatched:
            return
        chunks = [state.chunks[i] for i in sorted(state.chunks)]
        state.chunks.clear()
        self.writing += 1
        write = add_to_shard if self.job.adding else write_shard
        self.writes.append(self.writer.submit(write, self.ws, state.tar.stem, chunks, self.dims, self.records))
        while self.writes and self.writes[0].done():
            self._collect(self.writes.popleft())

    def _collect(self, future: Future) -> None:
        written = future.result()
        self.writing -= 1
        self.watch.tick()
        self.stats.add(written)
        self.progress.update(1, written["rows"], "images")
