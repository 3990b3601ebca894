"""What a reshard's output depends on, by content, never by file times.

* ``plan_fingerprint``: the subset's bytes (sha256), the settings and the pool shards' names and sizes:
  known before any shard is read, it names the plan in ``.reshard_plan.json`` and ``meta.json``.
* ``pool_digest``: every pool shard's name, size and content digest (``core.tar_io.DIGEST`` of all its
  bytes), recorded in ``meta.json`` when the reshard finishes. Pass 1 reads every byte of every shard
  anyway, so the digests come with the scan at no extra read.

A finished reshard is up to date when both match. The content digests are cached in
``filtered/.pool_digests.json``, keyed by each file's identity (size, modification and change times,
inode): in place, a rerun reads nothing; in a copy of the workspace (``cp -r``, a sync tool, an object
store: times and inodes differ) the shards are read once to recompute their digests, the output is
found identical and nothing is rewritten. The cache only saves reading: a wrong or foreign entry can
never match a file's current identity, so it is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poolsieve.core.formats import write_json
from poolsieve.core.runtime import Runtime
from poolsieve.core.tar_io import DIGEST, file_digest
from poolsieve.core.untrusted_files import open_regular
from poolsieve.pipeline.reshard.scan import file_identity

PLAN_VERSION = 2
DIGESTS_NAME = ".pool_digests.json"  # in filtered/, beside the output folders
_CACHE_LIMIT = 64 << 20  # a cache file larger than this is not read (it is only a cache)


def plan_fingerprint(subset_sha256: str, tars: Sequence[Path], sizes: Sequence[int], settings: dict[str, Any]) -> str:
    """The subset's bytes, the pool shards' names and sizes, and the settings the output depends on."""
    doc = {"version": PLAN_VERSION, "subset_sha256": subset_sha256,
           "shards": [[p.name, size] for p, size in zip(tars, sizes, strict=True)], **settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def pool_digest(tars: Sequence[Path], sizes: Sequence[int], digests: Sequence[str]) -> str:
    """One digest of the pool's content: each shard's name, size and content digest, in pool order."""
    doc = {"digest": DIGEST, "shards": [[p.name, size, d] for p, size, d in zip(tars, sizes, digests, strict=True)]}
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def pool_identity(tars: Sequence[Path]) -> str:
    """A digest of the pool shards' file identities (size, times, inode): equal only if none was touched."""
    return hashlib.sha256(json.dumps([[p.name, *file_identity(p.stat())] for p in tars]).encode()).hexdigest()


class DigestCache:
    """Content digests of pool shards by name, each valid only while the file keeps the identity it had."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, list] = {}
        self.changed = False
        try:
            with open_regular(path) as f:
                if os.fstat(f.fileno()).st_size <= _CACHE_LIMIT:
                    doc = json.loads(f.read())
                    if isinstance(doc, dict) and doc.get("digest") == DIGEST and isinstance(doc.get("shards"), dict):
                        self.entries = doc["shards"]
        except (OSError, ValueError, Exception):  # noqa: BLE001 - a missing or unreadable cache is an empty one
            self.entries = {}

    def get(self, name: str, identity: tuple[int, ...]) -> str | None:
        entry = self.entries.get(name)
        if isinstance(entry, list) and len(entry) == len(identity) + 1 and tuple(entry[:-1]) == identity \
                and isinstance(entry[-1], str):
            return entry[-1]
        return None

    def put(self, name: str, identity: tuple[int, ...], digest: str) -> None:
        if self.get(name, identity) != digest:
            self.entries[name] = [*identity, digest]
            self.changed = True

    def save(self) -> None:
        if self.changed:
            write_json(self.path, {"digest": DIGEST, "shards": self.entries})
            self.changed = False


def _digest_of(path: str) -> tuple[tuple[int, ...], str]:
    """A pool shard's identity (taken first) and content digest (a Ray task)."""
    identity = file_identity(os.stat(path))
    return identity, file_digest(path)[1]


def current_digests(tars: Sequence[Path], cache: DigestCache, runtime: Runtime) -> list[str]:
    """The content digest of every pool shard: from the cache where the file is untouched, else read
    (in parallel on Ray); the cache is updated and saved."""
    identities = [file_identity(p.stat()) for p in tars]
    digests = [cache.get(p.name, ident) for p, ident in zip(tars, identities, strict=True)]
    missing = [i for i, d in enumerate(digests) if d is None]
    if missing:
        for i, (identity, digest) in zip(missing, runtime.ordered_map(_digest_of, [str(tars[i]) for i in missing],
                                                                       max_in_flight=runtime.cpus()), strict=True):
            digests[i] = digest
            cache.put(tars[i].name, identity, digest)
        cache.save()
    return digests  # type: ignore[return-value]
