"""Miniature DataComp evaluation sets for the tests, and a hub served on 127.0.0.1 that holds them.

Every DataComp task gets a few generated 8x8 images: the webdataset tasks as the hub repo
``djghosh/wds_<key>_test`` (classnames.txt, zeroshot_classification_templates.txt, test/nshards.txt,
test/0.tar, with the ``.npy`` metadata that WILDS and fairness metrics group by), Flickr, MSCOCO and
WinoGAViL as the parquet dataset repos ``nlphuji/<name>`` that ``datasets`` reads.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from poolsieve.eval.tasks import DATACOMP_TASKS, Task

COMMIT = "0123456789abcdef0123456789abcdef01234567"
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 30), (200, 30, 200), (30, 200, 200)]
METADATA_WIDTH = {"wilds/iwildcam": 9, "wilds/camelyon17": 3, "wilds/fmow": 3, "fairness/dollar_street": 3,
                  "fairness/geode": 2, "fairness/fairface": 4, "fairness/utkface": 4}
FAIRFACE_CLASSES = {"race": [f"race{i}" for i in range(7)], "gender": ["male", "female"],
                    "age": [f"age{i}" for i in range(9)], "toxic": [f"thing{i}" for i in range(20)]}


def png(i: int, size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[i % len(COLOURS)]).save(buf, format="PNG")
    return buf.getvalue()


def _npy(values) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(values, dtype=np.int64))
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wds_repo_files(task: Task, n: int = 4) -> dict[str, bytes]:
    """The files of ``djghosh/wds_<key>_test`` in miniature."""
    members: list[tuple[str, bytes]] = []
    if task.key in ("fairness/fairface", "fairness/utkface"):
        classnames = [f"{o}:{c}" for o, cs in FAIRFACE_CLASSES.items() for c in cs]
        templates = [f"{o}:a photo of a {{c}}." for o in FAIRFACE_CLASSES] + [f"{o}:a face, {{c}}." for o in FAIRFACE_CLASSES]
        for i in range(n):
            race = i % 7
            members += [(f"s{i:04d}.png", png(i)), (f"s{i:04d}.npy", _npy([i % 9, i % 2, race, int(race != 1)]))]
    else:
        ncls = 6
        classnames = [f"thing {c}" for c in range(ncls)]
        templates = ["a photo of a {c}.", "a drawing of a {c}."]
        for i in range(n):
            label = i % ncls
            members += [(f"s{i:04d}.png", png(label)), (f"s{i:04d}.cls", str(label).encode())]
            if task.key in METADATA_WIDTH:
                meta = [(i + j) % 2 for j in range(METADATA_WIDTH[task.key])]
                members.append((f"s{i:04d}.npy", _npy(meta)))
    return {"classnames.txt": ("\n".join(classnames) + "\n").encode(),
            "zeroshot_classification_templates.txt": ("\n".join(templates) + "\n").encode(),
            "test/nshards.txt": b"1\n", "test/0.tar": _tar(members)}


def hf_repo_files(task: Task) -> dict[str, bytes]:
    """``nlphuji/<name>`` in miniature: one parquet of the test split, written by ``datasets``."""
    import datasets
    from PIL import Image

    def img(i: int):
        return Image.open(io.BytesIO(png(i)))

    if task.key == "misc/winogavil":
        rows = []
        for k, size in enumerate((5, 10, 12, 6)):
            names = [f"w{k}_{j}" for j in range(size)]
            rows.append({"cue": ["apple", "dog", "ice", "sun"][k], "candidates": names, "associations": names[:2],
                         "candidate_images": [img(j) for j in range(size)]})
        feats = datasets.Features({"cue": datasets.Value("string"),
                                   "candidates": datasets.Sequence(datasets.Value("string")),
                                   "associations": datasets.Sequence(datasets.Value("string")),
                                   "candidate_images": datasets.Sequence(datasets.Image())})
        ds = datasets.Dataset.from_list(rows, features=feats)
    else:
        feats = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))})
        ds = datasets.Dataset.from_list([{"image": img(i), "caption": [f"a picture {i}", f"thing {i}"]}
                                         for i in range(4)], features=feats)
    buf = io.BytesIO()
    ds.to_parquet(buf)
    return {"data/test-00000-of-00001.parquet": buf.getvalue()}


def all_repos(tasks=DATACOMP_TASKS) -> dict[str, dict[str, bytes]]:
    """repo id -> files, for every task (wds repos under djghosh/, datasets under nlphuji/)."""
    return {(t.hf_dataset if t.source == "hf" else t.hub_repo): (hf_repo_files(t) if t.source == "hf" else wds_repo_files(t))
            for t in tasks}


def write_wds_folders(root: Path, repos: dict[str, dict[str, bytes]]) -> None:
    """The ``wds_<key>_test`` folders exactly as DataComp's download_evalsets.py leaves them."""
    for repo, files in repos.items():
        if not repo.startswith("djghosh/"):
            continue
        for name, data in files.items():
            p = root / repo.split("/", 1)[1] / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


def fill_hf_cache(root: Path, endpoint: str, repos: list[str]) -> None:
    """What DataComp's download_evalsets.py does for the retrieval sets: ``datasets.load_dataset(repo,
    split="test", cache_dir=ROOT/hf_cache)``, here against the hub at ``endpoint`` (a fresh process, since
    huggingface_hub reads HF_ENDPOINT when imported)."""
    code = ("import sys, datasets\n"
            "for r in sys.argv[2:]: datasets.load_dataset(r, split='test', cache_dir=sys.argv[1])\n")
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(root / ".hf_home")}
    done = subprocess.run([sys.executable, "-c", code, str(root / "hf_cache"), *repos], env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])


class HubHandler(http.server.BaseHTTPRequestHandler):
    """The hub endpoints huggingface_hub and datasets use: repo info, tree listing, file resolve (with
    Range requests), for dataset repos and model repos alike. ``stall`` names a file whose first GET sends
    half its bytes and then hangs."""

    repos: dict[str, dict[str, bytes]] = {}
    seen: list[str] = []
    stall: str | None = None
    stalled: threading.Event

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/json", headers=None, head=False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _api(self, parts: list[str]) -> None:
        repo = "/".join(parts[2:4])
        files = self.repos.get(repo)
        if files is None:
            return self._send(404, b'{"error": "Repository not found"}', headers={"X-Error-Code": "RepoNotFound"})
        if len(parts) == 4 or parts[4] == "revision":
            return self._send(200, json.dumps({"id": repo, "sha": COMMIT, "private": False,
                                               "siblings": [{"rfilename": n} for n in files]}).encode())
        if parts[4] == "tree":
            sub = "/".join(parts[6:])
            recursive = "recursive=true" in self.path.lower()
            out, dirs = [], set()
            for n, d in files.items():
                if sub and not n.startswith(sub + "/"):
                    continue
                rest = n[len(sub) + 1:] if sub else n
                if "/" in rest and not recursive:
                    dirs.add((sub + "/" if sub else "") + rest.split("/")[0])
                    continue
                entry = {"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                if n.endswith(".tar"):
                    entry["lfs"] = {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 130}
                out.append(entry)
            out += [{"type": "directory", "path": p, "oid": "0" * 40, "size": 0} for p in sorted(dirs)]
            return self._send(200, json.dumps(out).encode())
        return self._send(404, b"{}")

    def _file(self, repo: str, name: str, head: bool) -> None:
        data = self.repos.get(repo, {}).get(name)
        if data is None:
            return self._send(404, headers={"X-Error-Code": "EntryNotFound"}, head=head)
        headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if not head and self.stall and f"{repo}/{name}" == self.stall and not self.stalled.is_set():
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.stalled.set()
            time.sleep(60)  # the client is killed meanwhile
            return
        if start:
            body = data[start:]
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, body, "application/octet-stream", headers, head)
        return self._send(200, data, "application/octet-stream", headers, head)

    def _route(self, head: bool = False) -> None:
        self.seen.append(f"{self.command} {self.path} range={self.headers.get('Range')}")
        parts = unquote(urlsplit(self.path).path).strip("/").split("/")
        if parts[:2] in (["api", "datasets"], ["api", "models"]):
            return self._api(parts)
        if parts[0] == "datasets" and len(parts) > 5 and parts[3] == "resolve":
            return self._file("/".join(parts[1:3]), "/".join(parts[5:]), head)
        if len(parts) > 4 and parts[2] == "resolve":  # a model repo: /ORG/NAME/resolve/REV/FILE
            return self._file("/".join(parts[:2]), "/".join(parts[4:]), head)
        return self._send(404, head=head)

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(404)


class MiniHub:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``repos`` (use as a context manager)."""

    def __init__(self, repos: dict[str, dict[str, bytes]], stall: str | None = None):
        self.handler = type("Handler", (HubHandler,), {"repos": repos, "seen": [], "stall": stall,
                                                       "stalled": threading.Event()})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> MiniHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
