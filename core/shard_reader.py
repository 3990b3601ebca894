"""Reading img2dataset webdataset shards sample by sample, in tar order, with errors that name the shard.

A sample is the run of consecutive tar members that share a key (``{key}.jpg``, ``{key}.txt``,
``{key}.json``). A tar that ends early or is corrupt raises ``InputError(tar, ...)``; a sample whose
image bytes are bad is still returned (decoding is the caller's business, and a failure there is a
recorded row, not a crash).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .member_kinds import IMAGE_KINDS as IMAGE_EXTENSIONS
from .member_kinds import TEXT_KINDS as TEXT_EXTENSIONS


@dataclass
class TarSample:
    """One sample of a pool shard: raw image bytes, caption and img2dataset's per-sample json."""

    key: str
    image: bytes | None = None
    image_ext: str = ""
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, bytes] = field(default_factory=dict)  # other members by extension (``cls``, ...)

    @property
    def uid(self) -> str | None:
        uid = self.meta.get("uid")
        return str(uid) if uid is not None else None

    @property
    def caption(self) -> str | None:
        """The ``.txt`` member, else the json's ``caption``."""
        if self.text is not None:
            return self.text
        cap = self.meta.get("caption")
        return None if cap is None else str(cap)


def _split_name(name: str) -> tuple[str, str]:
    """``dir/000010003.jpg`` -> (``dir/000010003``, ``jpg``); webdataset keys end at the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower() if dot else ""


def iter_tar_samples(path: str | Path) -> Iterator[TarSample]:
    """Yield the samples of ``path`` in tar order. Raises ``InputError(path, ...)`` on a bad tar."""
    path = Path(path)
    current: TarSample | None = None
    count = 0
    try:
        tar = tarfile.open(path, mode="r|")  # noqa: SIM115 - closed by the `with tar` below
    except FileNotFoundError:
        raise InputError(path, "shard does not exist") from None
    except tarfile.TarError as e:
        raise InputError(path, f"not a readable tar file ({e})") from None
    try:
        with tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if not ext or key.rsplit("/", 1)[-1].startswith("."):
                    continue
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short")
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                        count += 1
                    current = TarSample(key=key)
                _attach(current, ext, data, path)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InputError(path, f"truncated or corrupt tar after {count} whole samples ({e})") from None
    if current is not None:
        yield current


def _attach(sample: TarSample, ext: str, data: bytes, path: Path) -> None:
    if ext in IMAGE_EXTENSIONS:
        sample.image, sample.image_ext = data, ext
    elif ext in TEXT_EXTENSIONS:
        sample.text = data.decode("utf-8", errors="replace")
    elif ext == "json":
        try:
            meta = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(path, f"sample {sample.key}: its .json is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise InputError(path, f"sample {sample.key}: its .json is not an object")
        sample.meta = meta
    else:
        sample.extras[ext] = data


def read_shard(path: str | Path) -> list[TarSample]:
    """All samples of a shard, in tar order."""
    return list(iter_tar_samples(path))
