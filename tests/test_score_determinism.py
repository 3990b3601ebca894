"""Two downloads of one pool, in different orders and with different process and thread counts, give
byte-identical score tables and embeddings.

A server on 127.0.0.1 answers each image after a delay drawn from a seeded permutation (a new seed for
each download), so img2dataset, which writes samples in the order their fetches finish, writes each
shard's samples in a different order each time. Shard membership is fixed by input row, so both
workspaces hold the same shards with the same samples; scoring (one workspace in this process, the other
on Ray) must make the same bytes.
"""

from __future__ import annotations

import http.server
import random
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_score import save_tiny_checkpoint

from poolsieve.core.formats import read_score_table
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.demo.synthetic_pool import PoolSpec, generate_pool
from poolsieve.pipeline.download.stage import DownloadConfig, download
from poolsieve.pipeline.score.stage import ScoreConfig, score_pool

SAMPLES, PER_SHARD, STEP = 60, 20, 0.015  # STEP: seconds between two answers of the permutation
MISSING = 7  # every 7th image answers 404: a failed download, a gap in the keys


class ShufflingServer:
    """Serves ``root/images/*.jpg``; the answer for the i-th image waits ``STEP x perm[i]`` seconds, where
    ``perm`` is a permutation drawn from ``seed`` (``reshuffle`` draws another)."""

    def __init__(self, root: Path):
        self.root, self.delays = root, {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                name = Path(urlsplit(self.path).path).name
                file = owner.root / "images" / name
                owner.stop.wait(owner.delays.get(name, 0.0))
                if not file.is_file() or name in owner.missing:
                    self.send_error(404)
                    return
                body = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.stop = threading.Event()
        self.missing: set[str] = set()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def reshuffle(self, names: list[str], seed: int) -> None:
        perm = list(range(len(names)))
        random.Random(seed).shuffle(perm)
        self.delays = {name: STEP * p for name, p in zip(names, perm, strict=True)}

    def __enter__(self) -> ShufflingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def download_config(processes: int, threads: int) -> DownloadConfig:
    return DownloadConfig(samples_per_shard=PER_SHARD, image_size=64, processes=processes, threads=threads,
                          timeout=10.0, fetch_deadline=20.0, retries=0, watchdog_seconds=300,
                          allow_networks=["127.0.0.1/32"], min_success_rate=0.5)


@pytest.mark.download  # and Ray, from ray_runtime
def test_two_downloads_in_different_orders_give_identical_score_files(tmp_path, ray_runtime):
    root = tmp_path / "pool"
    (root / "synthetic").mkdir(parents=True)
    with ShufflingServer(root / "synthetic") as server:
        generate_pool(root, PoolSpec(num_samples=SAMPLES, samples_per_file=SAMPLES, image_size=48, seed=4,
                                     base_url=server.url, eval_samples=2, retrieval_samples=2, target_samples=2))
        names = sorted(p.name for p in (root / "synthetic" / "images").glob("*.jpg"))
        assert len(names) >= SAMPLES
        server.missing = set(names[::MISSING])
        workspaces = []
        for run, (processes, threads) in enumerate(((1, 12), (2, 5))):
            ws = Workspace.create(tmp_path / f"ws{run}")
            shutil.copytree(root / "metadata", ws.metadata_dir, dirs_exist_ok=True)
            server.reshuffle(names, seed=run)
            report = download(ws, download_config(processes, threads), Runtime(executor="local"))
            assert report["shards"] == SAMPLES // PER_SHARD and report["missing_shards"] == []
            workspaces.append(ws)
    first, second = workspaces
    tars = [t.name for t in first.shard_tars()]
    assert tars == [t.name for t in second.shard_tars()]
    written = [[tar_keys(ws.shards_dir / t) for t in tars] for ws in workspaces]
    assert written[0] != written[1], "both downloads wrote their samples in the same order: nothing is tested"
    assert [sorted(k) for k in written[0]] == [sorted(k) for k in written[1]]  # the same samples in each shard

    model = f"poolsieve-tiny:{save_tiny_checkpoint(tmp_path / 'tiny.pt')}"
    config = ScoreConfig(models=[model], chunk_size=8, batch_size=4, threads=1)
    score_pool(first, config, Runtime(executor="local"), quiet=True)
    score_pool(second, config, ray_runtime, quiet=True)
    for tar, keys in zip(tars, written[0], strict=True):
        stem = tar.removesuffix(".tar")
        for path in (Workspace.score_table_path, Workspace.embeddings_path):
            assert path(first, stem).read_bytes() == path(second, stem).read_bytes(), path(first, stem).name
        assert list(read_score_table(first.score_table_path(stem))["key"]) == sorted(keys)


def tar_keys(tar: Path) -> list[str]:
    """The sample keys of ``tar`` in the order the download wrote them (plain tarfile, file order)."""
    with tarfile.open(tar) as t:
        return [m.name.split(".")[0] for m in t.getmembers() if m.name.endswith(".json")]
