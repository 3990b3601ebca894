"""DataComp's released baseline files, pinned by sha256, and the one way poolsieve fetches them.

DataComp's ``baselines/utils.py`` downloads its baselines' inputs from fixed URLs and checks each
against a sha256: fastText's ``lid.176.bin`` (the caption language of ``basic``, ``text_based`` and
``image_based``), the pool centroids of ``image_based`` (``{small,medium,large,xlarge}_centroids``, a
``torch.save``d float32 array each), its ImageNet-1k ViT-L/14 targets (``in1k_clip_vit_l14_{0..4}``)
and the ImageNet-21k WordNet ids of ``text_based``. ``ASSETS`` holds the same names, URLs and hashes;
a file keeps the name DataComp's cache gives it (``lid.176.bin``, ``{name}.pt``), so a folder filled
here serves DataComp's own code as well.

``fetch(name, folder)`` (``poolsieve fetch-assets``):

* the folder defaults to the cache, ``$POOLSIEVE_CACHE`` or ``$XDG_CACHE_HOME/poolsieve``
  (``~/.cache/poolsieve``);
* a file already at its name is hashed again and kept when it matches; one that does not is refused
  in one line and left alone (poolsieve did not write it);
* otherwise an http(s) GET: ``$POOLSIEVE_ASSETS_URL`` replaces the folder part of every URL (a mirror,
  or a test's server on 127.0.0.1); the user's proxies are used; redirects are followed only to http
  and https URLs; each connect and read waits at most ``timeout`` seconds and the whole fetch (every
  redirect hop, headers, body) ends by ``deadline`` (``core/fetch_clock.py``: a server that trickles
  cannot hold it);
* the body is streamed to a temporary name beside the target, at most the asset's ``max_bytes``, hashed
  as it arrives, and renamed into place only when its sha256 is the pinned one. Until then the bytes
  are untrusted: a wrong hash, a short body, a refused redirect or a dead server ends in one line that
  says what to do, and nothing is left behind.

The hosts are not checked against the download's network guard: the URLs are poolsieve's own (or the
user's mirror) and nothing fetched is used before its hash matches. ``cached(name)`` is where the rest
of poolsieve looks for a pinned file (``core/language.py`` for ``lid.176.bin``): nothing is fetched
implicitly.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

from .errors import ConfigError, InputError, PoolsieveError
from .fetch_clock import ClockedHTTPHandler, ClockedHTTPSHandler, FetchClock, FetchDeadlineExceeded
from .formats import atomic_path
from .progress import Progress
from .untrusted_files import open_no_follow, open_regular

CACHE_ENV = "POOLSIEVE_CACHE"
BASE_URL_ENV = "POOLSIEVE_ASSETS_URL"
SCHEMES = ("http", "https")
TIMEOUT = 20.0  # seconds: each connect and each read
DEADLINE = 3600.0  # seconds: one file's whole fetch (126 MB to 1 GB)
CHUNK = 1 << 20
MiB = 1 << 20
_RELEASE = "https://github.com/sagadre/datacomp_baseline_assets/releases/download/v0.1.0-alpha/"


@dataclass(frozen=True)
class PinnedAsset:
    """One file DataComp pins: its name in DataComp's table, URL, sha256, cache file name and a size cap."""

    name: str
    url: str
    sha256: str
    file_name: str
    max_bytes: int  # a bound on what is accepted from the network, not the file's size
    what: str


def _release(name: str, remote: str, sha256: str, max_bytes: int, what: str) -> PinnedAsset:
    return PinnedAsset(name, _RELEASE + remote, sha256, f"{name}.pt", max_bytes, what)


# DataComp's baselines/utils.py `download` table (names, URLs, sha256), with DataComp's cache file names
ASSETS: dict[str, PinnedAsset] = {a.name: a for a in (
    PinnedAsset("fasttext", "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin",
                "7e69ec5451bc261cc7844e49e4792a85d7f09c06789ec800fc4a44aec362764e", "lid.176.bin", 256 * MiB,
                "fastText's language-id model, 126 MB (basic, text_based, image_based)"),
    *(_release(f"{scale}_centroids", f"{scale}_centroids_l14.pt", sha, 1536 * MiB,
               f"image_based: k-means centroids of the {scale} pool's L/14 image embeddings")
      for scale, sha in (("small", "23c66a05e49ad77283c1e2b33355c7eb088ac332a944c97ff85d5dfd48a5b251"),
                         ("medium", "028b1721b1d0f139c565b6b0ac99f8a1756f4bae89c36b0ec6d1c6ea9b6f112d"),
                         ("large", "04eeab1069d3540c246cf7ce69323147351a474017fc472e4c50a018ca32240b"),
                         ("xlarge", "3f62e5f8ae3a715ce84e422846fcfce1536d184455ea234790c4a6465c4c6726"))),
    *(_release(f"in1k_clip_vit_l14_{i}", f"in1k_clip_vit_l14_{i}.pt", sha, 1536 * MiB,
               f"image_based: ImageNet-1k train image features (L/14), part {i} of 5")
      for i, sha in enumerate(("304990fd492f40ba90072b80af78d6e8edcab9d042476ef513e03441cf53743b",
                               "72f008e6aa3bfb54174fa322963215337f843fc90fd642a9dccc815dd9e7ee76",
                               "83c3cc6503b8a50a22cac7023ca6cd61b130ab9725db2a7519f1bec5cabf5493",
                               "83faa289f847799ddcd438e5b74df1cb5973c345674896d10ba31ea48bc63804",
                               "067a45f4a140a93371876510a2fd9198a89ac1d194ae4063a51b45a6da69cadf"))),
    PinnedAsset("imagenet21k_wordnet_ids", _RELEASE + "imagenet21k_wordnet_ids.txt",
                "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2", "imagenet21k_wordnet_ids.txt",
                16 * MiB, "text_based: the WordNet ids of ImageNet-21k's classes"),
)}
# where DataComp's own download() keeps a file (a copy there that matches the pin is used too)
DATACOMP_CACHE = {"fasttext": "~/.cache/fasttext"}
DATACOMP_CACHE_DEFAULT = "~/.cache/datacomp"
LID_HINT = "or point POOLSIEVE_LID_MODEL at a copy"


def asset(name: str) -> PinnedAsset:
    """The pinned asset called ``name`` (DataComp's key, or its file name: ``lid.176.bin``)."""
    found = ASSETS.get(name) or next((a for a in ASSETS.values() if a.file_name == name), None)
    if found is None:
        raise ConfigError(f"no pinned asset '{name[:100]}'; known: {', '.join(ASSETS)}")
    return found


def cache_dir() -> Path:
    """``$POOLSIEVE_CACHE``, else ``$XDG_CACHE_HOME/poolsieve`` (``~/.cache/poolsieve``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "poolsieve"


def asset_url(item: PinnedAsset) -> str:
    """The URL fetched for ``item``: its pinned URL, or its file under ``$POOLSIEVE_ASSETS_URL``."""
    base = os.environ.get(BASE_URL_ENV)
    url = f"{base.rstrip('/')}/{item.url.rsplit('/', 1)[1]}" if base else item.url
    if urlsplit(url).scheme not in SCHEMES:
        raise ConfigError(f"{BASE_URL_ENV}={base!r}: not an http(s) URL")
    return url


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a regular file (missing files, FIFOs, folders refused in one line); hashed once per
    version of the file (path, inode, size, modification time, as opened) and process."""
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        version = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if version not in _HASHES:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
            _HASHES[version] = digest.hexdigest()
    return _HASHES[version]


_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def verified(item: PinnedAsset, path: Path) -> bool:
    """True when ``path`` holds ``item`` (its sha256 matches); False when nothing is there. A file there
    with another sha256 is refused in one line (``InputError``)."""
    if not os.path.lexists(path):
        return False
    digest = file_sha256(path)
    if digest != item.sha256:
        raise InputError(path, f"is not DataComp's {item.file_name}: its sha256 is {digest}, DataComp pins "
                               f"{item.sha256}; remove it and fetch the file again (poolsieve fetch-assets "
                               f"{item.name})")
    return True


def cached(name: str) -> Path | None:
    """The pinned file ``name`` in poolsieve's cache (one-line error if the copy there does not match the
    pin), else a matching copy in DataComp's own cache (a copy there that does not match is passed over:
    DataComp fetches it again itself), else ``None``."""
    item = asset(name)
    path = cache_dir() / item.file_name
    if verified(item, path):
        return path
    theirs = Path(DATACOMP_CACHE.get(item.name, DATACOMP_CACHE_DEFAULT)).expanduser() / item.file_name
    try:
        return theirs if verified(item, theirs) else None
    except InputError:
        return None


def fetch(name: str, folder: str | Path | None = None, *, timeout: float = TIMEOUT, deadline: float = DEADLINE,
          progress: bool = False) -> tuple[Path, bool]:
    """``(path, fetched now)``: the pinned file ``name`` in ``folder`` (default: the cache), fetched unless a
    copy matching the pin is there. Any failure is one ``PoolsieveError`` line; nothing is left behind."""
    item = asset(name)
    where = Path(folder).expanduser() if folder is not None else cache_dir()
    if where.exists() and not where.is_dir():
        raise InputError(where, "is not a folder: give --dest a folder to keep the files in")
    target = where / item.file_name
    if verified(item, target):
        return target, False
    url = asset_url(item)
    with atomic_path(target) as tmp:
        fd = open_no_follow(tmp, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "wb") as out:
            digest = _download(item, url, target, out, timeout, deadline, progress)
            out.flush()
            os.fsync(out.fileno())
        if digest != item.sha256:
            raise PoolsieveError(f"{item.file_name}: {url} sent a file whose sha256 is {digest}, not the "
                                 f"{item.sha256} DataComp pins: not saved; try again later, or from a mirror "
                                 f"({BASE_URL_ENV})")
    return target, True


class _SchemeCheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an http(s) URL (urllib's own check lets ftp: through)."""

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = (headers.get("location") or headers.get("uri") or "").strip()
        if urlsplit(urljoin(req.full_url, location)).scheme not in SCHEMES:
            fp.close()
            raise PoolsieveError(f"{req.full_url} redirected to {location[:200]!r}, which is not an http(s) URL: "
                                 "not followed, nothing saved")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(clock: FetchClock) -> urllib.request.OpenerDirector:
    """http and https only (directly or through the user's proxies), redirects checked, every hop on ``clock``."""
    proxies = {k: v for k, v in urllib.request.getproxies().items() if k in SCHEMES}
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(proxies), urllib.request.UnknownHandler(), ClockedHTTPHandler(clock),
                    ClockedHTTPSHandler(clock), urllib.request.HTTPDefaultErrorHandler(), _SchemeCheckedRedirects(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _download(item: PinnedAsset, url: str, target: Path, out: IO[bytes], timeout: float, deadline: float,
              progress: bool) -> str:
    """Stream ``url`` into ``out`` (at most ``item.max_bytes``); return the body's sha256."""
    failed = f"{item.file_name}: cannot fetch {url}"
    offline = (f"without a network, copy DataComp's {item.file_name} (sha256 {item.sha256}) to {target}"
               f"{', ' + LID_HINT if item.name == 'fasttext' else ''}, or set {BASE_URL_ENV} to a mirror")
    try:
        with _opener(FetchClock(deadline)).open(urllib.request.Request(url, headers={
                "User-Agent": "poolsieve-fetch-assets"}), timeout=timeout) as response:
            return _stream(item, url, response, out, progress)
    except urllib.error.HTTPError as e:
        raise PoolsieveError(f"{failed}: HTTP {e.code} {str(e.reason)[:100]}; nothing saved") from None
    except FetchDeadlineExceeded:
        raise PoolsieveError(f"{failed}: the whole fetch took over {deadline:g} s (deadline); nothing saved") from None
    except TimeoutError:
        raise PoolsieveError(f"{failed}: no answer within {timeout:g} s; nothing saved; {offline}") from None
    except urllib.error.URLError as e:  # connecting (a timeout or the deadline too) or an unknown scheme
        if isinstance(e.reason, FetchDeadlineExceeded):
            raise PoolsieveError(f"{failed}: the whole fetch took over {deadline:g} s (deadline); nothing saved") \
                from None
        raise PoolsieveError(f"{failed} ({str(e.reason)[:200]}); {offline}") from None
    except (http.client.HTTPException, ConnectionError) as e:
        raise PoolsieveError(f"{failed} ({type(e).__name__}: {str(e)[:200]}); nothing saved; run it again") from None


def _stream(item: PinnedAsset, url: str, response: Any, out: IO[bytes], progress: bool) -> str:
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.strip().isdigit() else None
    too_big = f"{item.file_name}: {url} sends more than {item.max_bytes:,} bytes, far more than DataComp's file: " \
              "not saved"
    if length is not None and length > item.max_bytes:
        raise PoolsieveError(too_big)
    digest, got = hashlib.sha256(), 0
    bar = Progress(f"fetch {item.file_name}", -(-length // MiB) if length else None, unit="MiB", quiet=not progress)
    while block := response.read(CHUNK):
        got += len(block)
        if got > item.max_bytes:
            raise PoolsieveError(too_big)
        digest.update(block)
        out.write(block)
        bar.update(-(-got // MiB) - bar.done)
    bar.close()
    if length is not None and got != length:
        raise PoolsieveError(f"{item.file_name}: the download from {url} ended after {got:,} of {length:,} bytes: "
                             "not saved; run it again")
    return digest.hexdigest()
