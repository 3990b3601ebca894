"""``poolsieve fetch-assets`` and ``core/pinned_assets.py`` against servers on 127.0.0.1: a right file, a
wrong hash, a truncated or oversized body, a server that never answers or trickles, redirects to other
schemes, no network. Nothing is saved unless its sha256 is the pinned one, and every failure is one line."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from slow_http_server import SlowServer

from poolsieve.core import pinned_assets
from poolsieve.core.errors import InputError, PoolsieveError
from poolsieve.core.pinned_assets import ASSETS, BASE_URL_ENV, CACHE_ENV, asset, asset_url, cached, fetch
from poolsieve.pipeline import cli

PAYLOAD = bytes(range(256)) * 4096 + b"the end"  # 1 MiB and a bit: more than one read


class AssetServer(http.server.ThreadingHTTPServer):
    """Serves ``PAYLOAD`` under every release file name, in the ways the tests need (by path prefix)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.paths: list[str] = []
        self.local_copy = "/etc/passwd"  # where the file: redirect points
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        kind, _, name = self.path.strip("/").partition("/")
        redirects = {"to-files": f"/files/{name}", "to-file-scheme": f"file://{self.server.local_copy}",  # type: ignore[attr-defined]
                     "to-ftp": "ftp://127.0.0.1/lid.176.bin", "to-data": "data:,hello"}
        if kind in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[kind])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "files":
            self._body(PAYLOAD, len(PAYLOAD))
        elif kind == "short":  # says 1 MiB and more, sends half, hangs up
            self._body(PAYLOAD[: len(PAYLOAD) // 2], len(PAYLOAD))
            self.close_connection = True
        elif kind == "unbounded":  # no length: the body ends when the connection does
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        else:
            self.send_error(404, "no such file")

    def _body(self, data: bytes, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    s = AssetServer()
    yield s
    s.shutdown()
    s.server_close()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A cache and a home of the test's own; no mirror, proxy or model override from the environment."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CACHE_HOME", BASE_URL_ENV, "POOLSIEVE_LID_MODEL", "http_proxy", "https_proxy", "HTTP_PROXY",
                "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def pinned_payload(monkeypatch):
    """fastText's entry pinned to ``PAYLOAD``'s sha256 (the test cannot serve DataComp's real file)."""
    monkeypatch.setitem(ASSETS, "fasttext", dataclasses.replace(
        ASSETS["fasttext"], sha256=hashlib.sha256(PAYLOAD).hexdigest()))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(["fetch-assets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    """The one error line, last on stderr (above it at most the fetch's progress lines)."""
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("poolsieve fetch-assets: error: "), err
    assert all(line.startswith("fetch ") for line in lines[:-1]), err
    return lines[-1]


def test_right_file_is_fetched_once_then_kept(server, pinned_payload, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(BASE_URL_ENV, f"{server.url}/to-files")  # one http redirect on the way
    dest = tmp_path / "assets"
    code, out, _ = run(["fasttext", "--dest", str(dest)], capsys)
    assert code == 0 and "lid.176.bin: fetched" in out
    assert (dest / "lid.176.bin").read_bytes() == PAYLOAD
    assert sorted(os.listdir(dest)) == ["lid.176.bin"]  # no temporary file left
    asked = len(server.paths)
    code, out, _ = run(["lid.176.bin", "--dest", str(dest)], capsys)  # the file name works as a name too
    assert code == 0 and "already there" in out and len(server.paths) == asked  # verified, not fetched again


def test_default_folder_is_the_cache_and_language_uses_it(server, pinned_payload, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(BASE_URL_ENV, f"{server.url}/files")
    code, _, _ = run(["fasttext"], capsys)
    assert code == 0 and cached("fasttext") == tmp_path / "cache" / "lid.176.bin"


def test_wrong_hash_is_not_saved(server, monkeypatch, tmp_path, capsys):
    """The served bytes are not DataComp's lid.176.bin: refused against DataComp's real pin."""
    monkeypatch.setenv(BASE_URL_ENV, f"{server.url}/files")
    dest = tmp_path / "assets"
    line = one_error_line(*run(["fasttext", "--dest", str(dest)], capsys)[::2])
    assert f"sha256 is {hashlib.sha256(PAYLOAD).hexdigest()}" in line and ASSETS["fasttext"].sha256 in line
    assert "not saved" in line
    assert os.listdir(dest) == []


def test_truncated_body_is_not_saved(server, pinned_payload, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(BASE_URL_ENV, f"{server.url}/short")
    dest = tmp_path / "assets"
    line = one_error_line(*run(["fasttext", "--dest", str(dest)], capsys)[::2])
    assert f"ended after {len(PAYLOAD) // 2:,} of {len(PAYLOAD):,} bytes" in line
    assert os.listdir(dest) == []


@pytest.mark.parametrize("kind", ["files", "unbounded"])
def test_a_body_over_the_cap_is_not_saved(server, pinned_payload, monkeypatch, tmp_path, kind):
    """A declared length over the cap stops before the body; a body without one stops at the cap."""
    monkeypatch.setitem(ASSETS, "fasttext", dataclasses.replace(ASSETS["fasttext"], max_bytes=1000))
    monkeypatch.setenv(BASE_URL_ENV, f"{server.url}/{kind}")
    with pytest.raises(PoolsieveError, match="more than 1,000 bytes"):
        fetch("fasttext", tmp_path / "assets")
    assert os.listdir(tmp_path / "assets") == []


@pytest.mark.parametrize("kind", ["to-file-scheme", "to-ftp", "to-data"])
def test_redirect_to_another_scheme_is_not_followed(server, pinned_payload, monkeypatch, tmp_path, capsys, kind):
    """The file: redirect points at a local copy of the very file pinned: followed, it would be saved."""
    local = tmp_path / "local" / "lid.176.bin"
    local.parent.mkdir()
    local.write_bytes(PAYLOAD)
    monkeypatch.setattr(server, "local_copy", str(local))
    monkeypatch.setenv(BASE_URL_ENV, f"{server.url}/{kind}")
    dest = tmp_path / "assets"
    line = one_error_line(*run(["fasttext", "--dest", str(dest)], capsys)[::2])
    assert "not an http(s) URL: not followed" in line
    assert os.listdir(dest) == []


def test_a_server_that_never_answers_ends_at_the_timeout(monkeypatch, tmp_path, capsys):
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever reads or writes
    try:
        monkeypatch.setenv(BASE_URL_ENV, f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        line = one_error_line(*run(["fasttext", "--dest", str(tmp_path / "a"), "--timeout", "0.5"], capsys)[::2])
        assert time.monotonic() - start < 10
    finally:
        silent.close()
    assert "no answer within 0.5 s" in line and "nothing saved" in line


def test_a_trickling_server_ends_at_the_deadline(monkeypatch, tmp_path, capsys):
    """One header byte every 0.2 s: each read is quick, the whole fetch is not."""
    with SlowServer(interval=0.2, max_seconds=30) as slow:
        monkeypatch.setenv(BASE_URL_ENV, f"{slow.url}/slow-headers")
        start = time.monotonic()
        line = one_error_line(*run(["fasttext", "--dest", str(tmp_path / "a"), "--timeout", "5", "--deadline", "1"],
                                   capsys)[::2])
        assert time.monotonic() - start < 5
    assert "took over 1 s (deadline)" in line


def test_offline_is_one_line_saying_what_to_do(monkeypatch, tmp_path, capsys):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: connection refused, as with no network
    monkeypatch.setenv(BASE_URL_ENV, f"http://127.0.0.1:{port}/assets")
    line = one_error_line(*run(["fasttext"], capsys)[::2])
    target = tmp_path / "cache" / "lid.176.bin"
    assert f"cannot fetch http://127.0.0.1:{port}/assets/lid.176.bin" in line
    assert f"copy DataComp's lid.176.bin (sha256 {ASSETS['fasttext'].sha256}) to {target}" in line
    assert "POOLSIEVE_LID_MODEL" in line and BASE_URL_ENV in line
    assert not target.exists()


def test_http_error_is_one_line(server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(BASE_URL_ENV, f"{server.url}/nowhere")
    line = one_error_line(*run(["small_centroids", "--dest", str(tmp_path)], capsys)[::2])
    assert "small_centroids.pt: cannot fetch" in line and "HTTP 404" in line


def test_a_file_already_there_that_does_not_match_is_left_alone(server, pinned_payload, monkeypatch, tmp_path,
                                                                capsys):
    monkeypatch.setenv(BASE_URL_ENV, f"{server.url}/files")
    dest = tmp_path / "assets"
    dest.mkdir()
    (dest / "lid.176.bin").write_bytes(b"someone else's file")
    asked = len(server.paths)
    line = one_error_line(*run(["fasttext", "--dest", str(dest)], capsys)[::2])
    assert "is not DataComp's lid.176.bin" in line and "remove it" in line
    assert (dest / "lid.176.bin").read_bytes() == b"someone else's file" and len(server.paths) == asked


def test_dest_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert "is not a folder" in one_error_line(*run(["fasttext", "--dest", str(tmp_path / "f")], capsys)[::2])


def test_a_fifo_in_its_place_is_refused_without_blocking(pinned_payload, tmp_path, capsys):
    dest = tmp_path / "assets"
    dest.mkdir()
    os.mkfifo(dest / "lid.176.bin")
    line = one_error_line(*run(["fasttext", "--dest", str(dest)], capsys)[::2])
    assert "is a FIFO" in line


def test_names_list_and_unknown_names(capsys):
    code, out, _ = run(["--list"], capsys)
    assert code == 0 and all(name in out for name in ASSETS)
    assert {f"in1k_clip_vit_l14_{i}" for i in range(5)} | {f"{s}_centroids" for s in
                                                          ("small", "medium", "large", "xlarge")} <= set(ASSETS)
    line = one_error_line(*run(["tiny_centroids"], capsys)[::2])
    assert "no pinned asset 'tiny_centroids'" in line and "small_centroids" in line
    assert "name the files" in one_error_line(*run([], capsys)[::2])


def test_the_table_is_datacomps():
    """Names, URLs and hashes as DataComp's baselines/utils.py pins them; the cache names are DataComp's too."""
    lid = asset("fasttext")
    assert lid.url == "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin"
    assert lid.sha256 == "7e69ec5451bc261cc7844e49e4792a85d7f09c06789ec800fc4a44aec362764e"
    small = asset("small_centroids")
    assert small.url.endswith("/sagadre/datacomp_baseline_assets/releases/download/v0.1.0-alpha/small_centroids_l14.pt")
    assert small.sha256 == "23c66a05e49ad77283c1e2b33355c7eb088ac332a944c97ff85d5dfd48a5b251"
    assert small.file_name == "small_centroids.pt" and asset("in1k_clip_vit_l14_4").file_name == "in1k_clip_vit_l14_4.pt"
    assert all(len(a.sha256) == 64 and a.url.startswith("https://") for a in ASSETS.values())


def test_mirror_url_must_be_http(monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, "file:///srv/mirror")
    with pytest.raises(PoolsieveError, match="not an http"):
        asset_url(asset("fasttext"))
    monkeypatch.setenv(BASE_URL_ENV, "https://mirror.example/datacomp/")
    assert asset_url(asset("small_centroids")) == "https://mirror.example/datacomp/small_centroids_l14.pt"


def test_a_copy_in_datacomps_cache_is_used_a_wrong_one_passed_over(pinned_payload, tmp_path):
    theirs = tmp_path / "home" / ".cache" / "fasttext" / "lid.176.bin"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(PAYLOAD[:100])  # a download DataComp's code left half done
    assert cached("fasttext") is None
    theirs.write_bytes(PAYLOAD)
    assert cached("fasttext") == theirs
    mine = tmp_path / "cache" / "lid.176.bin"
    mine.parent.mkdir()
    mine.write_bytes(b"x")
    with pytest.raises(InputError, match="is not DataComp's lid.176.bin"):  # poolsieve's own cache: never passed over
        cached("fasttext")


def test_hash_is_taken_again_when_the_file_changes(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    assert pinned_assets.file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two!")
    assert pinned_assets.file_sha256(path) == hashlib.sha256(b"two!").hexdigest()
    with pytest.raises(InputError, match="does not exist"):
        pinned_assets.file_sha256(Path(tmp_path / "none"))
