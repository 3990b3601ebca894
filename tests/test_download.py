"""The download stage against a local server that misbehaves in every common way, then recovers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_download_support import FAST, assert_shards_whole, make_served_pool, parquet_rows, tar_uids

from poolsieve.core.errors import InputError
from poolsieve.core.runtime import Runtime
from poolsieve.pipeline.demo.image_server import ImageServer
from poolsieve.pipeline.download.failures import FAILURES_NAME, failure_reason
from poolsieve.pipeline.download.netguard import DEFAULT_DENY_NETWORKS
from poolsieve.pipeline.download.report import REPORT_NAME
from poolsieve.pipeline.download.stage import DownloadConfig, download

FAULT_REASONS = {
    "http_404": "http_404",
    "http_500": "http_500",
    "hang": "timeout",
    "trickle": "deadline",
    "truncated": "decode",
    "not_image": "decode",
    "bomb": "too_large",
    "redirect_loop": "redirect_loop",
    "reset": "connection",
}


@pytest.mark.download
def test_faults_are_recorded_and_retry_failed_completes_the_pool(tmp_path: Path) -> None:
    pool = make_served_pool(tmp_path / "ws", n=48, per_file=24)
    uids = list(pool.metadata["uid"])
    faulty = dict(zip(uids[3::5], FAULT_REASONS, strict=False))
    assert len(faulty) == len(FAULT_REASONS)
    denied_uid = uids[-2]
    # One url points at a second server on a denied loopback address: it must never see a request.
    denied_server = ImageServer(pool.ws.root / "synthetic", host="127.0.0.2").start()
    blurred = {uids[0], uids[30]}  # DataComp's face boxes: these two are blurred whole
    for meta_file in pool.ws.metadata_files():
        df = pd.read_parquet(meta_file)
        df.loc[df["uid"] == denied_uid, "url"] = f"{denied_server.url}/images/{denied_uid}.jpg"
        df["face_bboxes"] = [[[0.0, 0.0, 1.0, 1.0]] if u in blurred else [] for u in df["uid"]]
        df.to_parquet(meta_file, index=False)
    pool.server.set_faults({pool.path_of(u): f for u, f in faulty.items()})
    cfg = DownloadConfig(samples_per_shard=16, watchdog_seconds=120,
                         deny_networks=[*DEFAULT_DENY_NETWORKS, "127.0.0.2/32"], **FAST)
    try:
        report = download(pool.ws, cfg, Runtime(executor="local"))
        shards = pool.ws.shards_dir
        expected_reasons = {u: FAULT_REASONS[f] for u, f in faulty.items()} | {denied_uid: "denied"}
        failures = pd.read_parquet(shards / FAILURES_NAME)
        assert dict(zip(failures["uid"], failures["reason"], strict=True)) == expected_reasons
        assert failures["error_message"].str.len().gt(0).all()
        want_counts = pd.Series(list(expected_reasons.values())).value_counts().to_dict()
        assert report["failures_by_reason"] == want_counts
        assert report == json.loads((shards / REPORT_NAME).read_text())
        assert report["samples"] == 48 and report["successes"] == 48 - len(expected_reasons)
        assert report["shards"] == report["planned_shards"] == 4 and report["missing_shards"] == []
        assert report["this_run"]["samples_per_s"] > 0
        good = set(uids) - set(expected_reasons)
        in_tars = tar_uids(shards)
        assert set(in_tars) == good and set(in_tars.values()) == {1}
        assert_shards_whole(shards)
        sharpness = _relative_sharpness(shards, pool.ws.root / "synthetic" / "images")
        # Sharpness relative to the source depends on the picture; a whole-image blur must leave each
        # blurred image clearly softer than the typical unblurred download of the same pool.
        typical = float(np.median([v for u, v in sharpness.items() if u not in blurred]))
        assert typical > 0.6, sharpness
        assert all(sharpness[u] < 0.9 * typical for u in blurred), (typical, {u: sharpness[u] for u in blurred})
        assert denied_server.requests() == 0
        for uid in faulty:
            assert pool.server.requests(pool.path_of(uid)) >= 1

        # A plain rerun has nothing to do: every shard is whole.
        before = pool.server.requests()
        again = download(pool.ws, cfg, Runtime(executor="local"))
        assert pool.server.requests() == before and again["this_run"]["shards_done"] == 0

        # The server recovers; --retry-failed fetches the failures only and completes the pool.
        pool.server.clear_faults()
        cfg.retry_failed = True
        report = download(pool.ws, cfg, Runtime(executor="local"))
        assert pool.server.requests() - before == len(faulty)  # only the failed urls were fetched
        assert denied_server.requests() == 0
        assert report["failures_by_reason"] == {"denied": 1}
        assert report["success_rate_excluding_denied"] == 1.0 and report["samples"] == 48
        assert report["shards"] == 5 and report["this_run"]["mode"] == "retry_failed"
        in_tars = tar_uids(shards)
        assert set(in_tars) == set(uids) - {denied_uid} and set(in_tars.values()) == {1}
        rows = parquet_rows(shards)
        assert rows["uid"].is_unique and set(rows["uid"]) == set(uids)
        assert set(rows.loc[rows["uid"].isin(faulty), "shard"]) == {"00004"}
        assert_shards_whole(shards)
        assert not (shards / ".staging").exists()
    finally:
        pool.server.stop()
        denied_server.stop()


def _relative_sharpness(shards: Path, sources: Path) -> dict[str, float]:
    """Per downloaded image: its mean absolute horizontal pixel difference over its source's (same size)."""
    import io
    import tarfile

    from PIL import Image

    out = {}
    for tar_path in shards.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in members.items():
            if name.endswith(".jpg"):
                uid = json.loads(members[name[:-4] + ".json"])["uid"]
                img = Image.open(io.BytesIO(data))
                src = Image.open(sources / f"{uid}.jpg").resize(img.size, Image.BOX)
                out[uid] = _sharpness(img) / _sharpness(src)
    return out


def _sharpness(img) -> float:
    import numpy as np

    return float(np.abs(np.diff(np.asarray(img.convert("L"), dtype=np.float32), axis=1)).mean())


def test_bad_metadata_is_named(tmp_path: Path) -> None:
    from poolsieve.core.workspace import Workspace

    ws = Workspace.create(tmp_path / "ws")
    ws.metadata_dir.mkdir()
    pd.DataFrame({"uid": ["0" * 32], "text": ["a red circle"]}).to_parquet(ws.metadata_dir / "00000.parquet")
    with pytest.raises(InputError, match=r"00000\.parquet: missing column\(s\) url"):
        download(ws, DownloadConfig(), Runtime(executor="local"))
    (ws.metadata_dir / "00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable parquet"):
        download(ws, DownloadConfig(), Runtime(executor="local"))


@pytest.mark.parametrize(("status", "error", "reason"), [
    ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
    ("failed_to_download", "HTTP Error 302: The HTTP server returned a redirect error that would lead to an "
                           "infinite loop.", "redirect_loop"),
    ("failed_to_download", "<urlopen error timed out>", "timeout"),
    ("failed_to_download", "The read operation timed out", "timeout"),
    ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", "dns"),
    ("failed_to_download", "<urlopen error [Errno -3] Temporary failure in name resolution>", "dns"),
    ("failed_to_download", "<urlopen error poolsieve-denied: address 169.254.169.254 in denied network "
                           "169.254.0.0/16>", "denied"),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection"),
    ("failed_to_resize", "Image decoding error", "decode"),
    ("failed_to_resize", "image too small", "too_small"),
    ("failed_to_resize", "image area too large: header declares 50000x50000 pixels", "too_large"),
    ("failed_to_download", "hash mismatch", "hash_mismatch"),
    ("success", None, "success"),
])
def test_failure_reasons(status: str, error: str | None, reason: str) -> None:
    assert failure_reason(status, error) == reason
