"""DataComp metadata from the hub (a hub API served on 127.0.0.1) or from a local folder."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import InputError
from poolsieve.pipeline.download.hub_metadata import SCALES, fetch_metadata

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _metadata(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"uid": [rng.bytes(16).hex() for _ in range(n)],
                         "url": [f"http://example.invalid/{i}.jpg" for i in range(n)],
                         "text": ["a red circle"] * n, "original_width": [256] * n, "original_height": [256] * n})


def _write_repo(root: Path, nested: bool) -> dict[str, bytes]:
    """A DataComp-like repo: parquets with npz beside them (xlarge: in part_* folders)."""
    files = {}
    for i in range(3):
        name = (f"part_{i}/" if nested else "") + f"{i:05d}"
        p = root / f"{name}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        _metadata(5, i).to_parquet(p, index=False)
        np.savez(root / f"{name}.npz", b32_img=np.full((5, 4), i, np.float16))
        files[f"{name}.parquet"] = p.read_bytes()
        files[f"{name}.npz"] = (root / f"{name}.npz").read_bytes()
    (root / "README.md").write_text("not metadata")
    files["README.md"] = (root / "README.md").read_bytes()
    return files


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """The few hub endpoints ``snapshot_download`` uses: revision info, tree listing, file resolve."""

    files: dict[str, bytes] = {}
    repo: str = ""
    seen: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, head: bool) -> None:
        prefix = f"/datasets/{self.repo}/resolve/{COMMIT}/"
        path = unquote(urlsplit(self.path).path)
        name = path[len(prefix):] if path.startswith(prefix) else None
        if name not in self.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self.seen.append("HEAD " + self.path)
        self._file(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append("GET " + self.path)
        path = urlsplit(self.path).path
        if path == f"/api/datasets/{self.repo}/revision/main":
            self._json({"id": self.repo, "sha": COMMIT,
                        "siblings": [{"rfilename": n} for n in self.files]})
        elif path.startswith(f"/api/datasets/{self.repo}/tree/{COMMIT}"):
            self._json([{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for n, d in self.files.items()])
        else:
            self._file(head=False)


@pytest.fixture
def hub(tmp_path: Path):
    files = _write_repo(tmp_path / "repo", nested=True)
    handler = type("Handler", (_HubHandler,), {"files": files, "repo": SCALES["xlarge"], "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_hub_snapshot_is_flattened_into_metadata(tmp_path: Path, hub) -> None:
    endpoint, handler = hub
    dest = tmp_path / "ws" / "metadata"
    out = fetch_metadata(dest, scale="xlarge", include_npz=True, cache_dir=tmp_path / "cache", endpoint=endpoint)
    assert out == {"skipped": False, "parquet": 3, "npz": 3, "source": "hf://datasets/mlfoundations/datacomp_xlarge"}
    assert sorted(p.name for p in dest.iterdir()) == [f"{i:05d}.{e}" for i in range(3) for e in ("npz", "parquet")]
    for i in range(3):
        assert (dest / f"{i:05d}.parquet").read_bytes() == handler.files[f"part_{i}/{i:05d}.parquet"]
    assert sum(s.startswith("GET") and "/resolve/" in s for s in handler.seen) == 6
    assert not any("README" in s for s in handler.seen)  # only the metadata patterns are fetched
    # Present metadata is kept; parquets only without npz.
    assert fetch_metadata(dest, scale="xlarge", endpoint=endpoint)["skipped"] is True
    dest2 = tmp_path / "ws2" / "metadata"
    fetch_metadata(dest2, scale="xlarge", cache_dir=tmp_path / "cache2", endpoint=endpoint)
    assert sorted(p.suffix for p in dest2.iterdir()) == [".parquet"] * 3


def test_local_folder_source_and_bad_input(tmp_path: Path) -> None:
    _write_repo(tmp_path / "src", nested=False)
    dest = tmp_path / "metadata"
    out = fetch_metadata(dest, source=tmp_path / "src")
    assert out["parquet"] == 3 and out["npz"] == 0 and not list(dest.glob("*.npz"))
    pd.testing.assert_frame_equal(pd.read_parquet(dest / "00001.parquet"), _metadata(5, 1))
    out = fetch_metadata(dest, source=tmp_path / "src", include_npz=True, overwrite=True)
    assert out["npz"] == 3 and len(list(dest.glob("*.npz"))) == 3
    with pytest.raises(InputError, match="does not exist"):
        fetch_metadata(tmp_path / "m2", source=tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    _metadata(3, 0).drop(columns=["url"]).to_parquet(bad / "00000.parquet")
    with pytest.raises(InputError, match=r"00000\.parquet: missing column\(s\) url"):
        fetch_metadata(tmp_path / "m3", source=bad)
    assert not (tmp_path / "m3").exists()
