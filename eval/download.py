"""``poolsieve evaluate --download DIR``: DataComp's evaluation sets, laid out as its ``download_evalsets.py``
leaves them, so that ``--data-root DIR`` (and DataComp's own ``--data_dir``) reads them.

Webdataset tasks: ``DIR/wds_<key>_test/`` with ``classnames.txt``, ``zeroshot_classification_templates.txt``,
``test/nshards.txt`` and ``test/{0..n-1}.tar`` from the dataset repo ``djghosh/wds_<key>_test``. A file
is fetched to ``NAME.part`` (continued with an HTTP Range request after a kill) and renamed when whole;
a tar already there is kept when its size and sha256 match the hub's LFS record. Flickr, MSCOCO and
WinoGAViL: ``datasets.load_dataset("nlphuji/<name>", split="test", cache_dir=DIR/hf_cache)``, as
DataComp does. The hub is ``$HF_ENDPOINT`` (default ``https://huggingface.co``); it is probed first, so
without a network the command stops with one line; a set that fails is one line and the others go on.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import requests

from poolsieve.core.errors import PoolsieveError

from .hub_datasets import HF_CACHE, hub_endpoint, quiet_hub_logs
from .task_spec import resolve_tasks
from .tasks import Task

METADATA_FILES = ("classnames.txt", "zeroshot_classification_templates.txt")
CHUNK = 1 << 16
TIMEOUT = 30


def _session() -> Any:
    s = requests.Session()
    s.headers["User-Agent"] = "poolsieve-evalsets"
    return s


def probe(endpoint: str, repo: str) -> None:
    """One request to the hub; unreachable -> one-line PoolsieveError."""
    try:
        _session().get(f"{endpoint}/api/datasets/{repo}", timeout=10)
    except requests.RequestException as e:
        reason = type(e).__name__
        raise PoolsieveError(f"cannot reach the hub at {endpoint} ({reason}); set HF_ENDPOINT to a reachable "
                             "mirror or copy a folder made by DataComp's download_evalsets.py") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _listing(session: Any, endpoint: str, repo: str) -> dict[str, dict[str, Any]]:
    """path -> {size, sha256 (LFS files)} of a dataset repo."""
    r = session.get(f"{endpoint}/api/datasets/{repo}/tree/main", params={"recursive": "true"}, timeout=TIMEOUT)
    if r.status_code == 404:
        raise PoolsieveError(f"{repo} is not on the hub at {endpoint}")
    r.raise_for_status()
    return {e["path"]: {"size": e.get("size"), "sha256": (e.get("lfs") or {}).get("oid")}
            for e in r.json() if e.get("type") == "file"}


def fetch_file(session: Any, url: str, dest: Path, size: int | None = None, sha256: str | None = None) -> int:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with Range); return bytes fetched now."""
    if dest.exists() and (size is None or dest.stat().st_size == size) and (sha256 is None or _sha256(dest) == sha256):
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    fetched = 0
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
        if r.status_code == 416 and size is not None and have == size:
            pass
        else:
            r.raise_for_status()
            mode = "ab" if have and r.status_code == 206 else "wb"
            with open(part, mode) as f:
                for block in r.iter_content(CHUNK):
                    f.write(block)
                    fetched += len(block)
    if size is not None and part.stat().st_size != size:
        raise PoolsieveError(f"{url}: got {part.stat().st_size} bytes, expected {size}")
    if sha256 is not None and _sha256(part) != sha256:
        part.unlink()
        raise PoolsieveError(f"{url}: sha256 does not match the hub's record (partial file discarded)")
    part.replace(dest)
    return fetched


def download_wds(task: Task, root: Path, endpoint: str, session: Any) -> tuple[int, int]:
    """The ``wds_<key>_test`` folder of ``task``; returns (files, bytes fetched now)."""
    listing = _listing(session, endpoint, task.hub_repo)
    base = f"{endpoint}/datasets/{task.hub_repo}/resolve/main"
    target = root / task.wds_name
    (target / "test").mkdir(parents=True, exist_ok=True)
    fetched = files = 0
    for name in (*METADATA_FILES, "test/nshards.txt"):
        if name in listing:
            fetched += fetch_file(session, f"{base}/{name}", target / name, listing[name]["size"])
            files += 1
    if not (target / "test" / "nshards.txt").exists():
        raise PoolsieveError(f"{task.hub_repo} has no test/nshards.txt")
    nshards = int((target / "test" / "nshards.txt").read_text().strip())
    for i in range(nshards):
        name = f"test/{i}.tar"
        info = listing.get(name, {})
        fetched += fetch_file(session, f"{base}/{name}", target / name, info.get("size"), info.get("sha256"))
        files += 1
    return files, fetched


def download_hf(task: Task, root: Path) -> tuple[int, int]:
    """``datasets.load_dataset`` into ``root/hf_cache`` (DataComp's call); returns (rows, 0)."""
    import datasets

    with quiet_hub_logs():
        data = datasets.load_dataset(task.hf_dataset, split="test", cache_dir=str(root / HF_CACHE))
    return len(data), 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def download_evalsets(root: str | Path, tasks: str = "datacomp38") -> dict[str, Any]:
    """Fetch the test sets of ``tasks`` (DataComp's by default) into ``root``; one stderr line per set."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    chosen = [t for t in resolve_tasks(tasks) if t.datacomp]
    if not chosen:
        raise PoolsieveError(f"no DataComp evaluation sets among tasks {tasks!r}")
    endpoint = hub_endpoint()
    probe(endpoint, chosen[0].hub_repo if chosen[0].source == "wds" else chosen[0].hf_dataset)
    session = _session()
    done, failed = [], []
    for i, task in enumerate(chosen, 1):
        head = f"download [{i}/{len(chosen)}] {task.name}"
        try:
            if task.source == "hf":
                rows, _ = download_hf(task, root)
                print(f"{head}: {rows} rows in {root / HF_CACHE}", file=sys.stderr)
            else:
                files, fetched = download_wds(task, root, endpoint, session)
                print(f"{head}: {files} files, {fetched / 1e6:.1f} MB fetched", file=sys.stderr)
            done.append(task.key)
        except Exception as e:  # noqa: BLE001 - one line per failed set, the others go on
            failed.append(task.key)
            print(f"{head}: failed: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
    print(f"download: {len(done)} of {len(chosen)} evaluation sets in {root}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return {"root": str(root), "done": done, "failed": failed}
