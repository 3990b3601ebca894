"""Issue 13, finding 5 at the stage level: a server on 127.0.0.1 is not fetched from unless allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_download_support import FAST, make_served_pool
from test_netguard_support import clear_proxy_env

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.runtime import Runtime
from poolsieve.pipeline.download.failures import FAILURES_NAME
from poolsieve.pipeline.download.report import REPORT_NAME
from poolsieve.pipeline.download.stage import DownloadConfig, download


@pytest.mark.download
def test_loopback_pool_is_denied_without_allow_network(tmp_path: Path, monkeypatch, capsys) -> None:
    clear_proxy_env(monkeypatch)
    pool = make_served_pool(tmp_path / "ws", n=6, per_file=6)
    try:
        settings = {k: v for k, v in FAST.items() if k != "allow_networks"}
        with pytest.raises(PoolsieveError, match="denied=6"):  # a run that fetched nothing fails, in one line
            download(pool.ws, DownloadConfig(samples_per_shard=6, **settings), Runtime(executor="local"))
        assert pool.server.requests() == 0
        report = json.loads((pool.ws.shards_dir / REPORT_NAME).read_text())
        assert report["denied"] == 6 and report["successes"] == 0 and report["failures_by_reason"] == {"denied": 6}
        failures = pd.read_parquet(pool.ws.shards_dir / FAILURES_NAME)
        assert failures["error_message"].str.contains("in denied network 127.0.0.0/8 (loopback)", regex=False).all()
        assert "every sample denied by the network guard: see --allow-network" in capsys.readouterr().out
    finally:
        pool.server.stop()
