"""DataComp's pool metadata: from the Hugging Face hub (``--scale``) or from a local folder.

``mlfoundations/datacomp_{small,medium,large,xlarge}`` are dataset repos of metadata parquets (uid, url,
text, sizes, face boxes, CLIP scores) and, beside each, an ``.npz`` of precomputed CLIP embeddings.
xlarge keeps its files in ``part_*/`` folders; like DataComp's ``download_upstream.py`` the files are
flattened into ``metadata/``. A local folder with the same files takes the same path, so the code is
tested on files on disk. ``endpoint`` (or ``HF_ENDPOINT``) points huggingface_hub at a mirror.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from poolsieve.core.errors import InputError, PoolsieveError
from poolsieve.core.metadata_checks import scan_metadata

SCALES = {
    "small": "mlfoundations/datacomp_small",
    "medium": "mlfoundations/datacomp_medium",
    "large": "mlfoundations/datacomp_large",
    "xlarge": "mlfoundations/datacomp_xlarge",
}


def patterns(include_npz: bool) -> list[str]:
    exts = ["parquet", "npz"] if include_npz else ["parquet"]
    return [p for ext in exts for p in (f"*.{ext}", f"*/*.{ext}")]


def snapshot_from_hub(scale: str, include_npz: bool, cache_dir: Path | None, endpoint: str | None = None,
                      revision: str | None = None, max_workers: int = 8) -> Path:
    """Download (or reuse from the cache) the scale's metadata snapshot; return its folder."""
    if scale not in SCALES:
        raise PoolsieveError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id=SCALES[scale], repo_type="dataset", revision=revision,
                                   allow_patterns=patterns(include_npz), cache_dir=cache_dir,
                                   endpoint=endpoint, max_workers=max_workers)
    except LocalEntryNotFoundError as e:
        raise PoolsieveError(f"cannot fetch {SCALES[scale]} from the hub and it is not cached: {e}") from None
    except HfHubHTTPError as e:
        raise PoolsieveError(f"the hub refused {SCALES[scale]}: {str(e).splitlines()[0]}") from None
    return Path(folder)


def _place(src: Path, dest: Path) -> None:
    """Hard-link ``src`` to ``dest`` (copy across file systems); atomic under the final name."""
    src = src.resolve()  # hub cache snapshots are symlinks into blobs/
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def collect_files(folder: Path, include_npz: bool) -> dict[str, Path]:
    """Metadata files at the top of ``folder`` or one folder down (xlarge's ``part_*``), by file name."""
    found: dict[str, Path] = {}
    exts = (".parquet", ".npz") if include_npz else (".parquet",)
    for p in sorted([*folder.glob("*"), *folder.glob("*/*")]):
        if p.suffix not in exts or p.name.startswith(".") or not p.is_file():
            continue
        if p.name in found:
            raise InputError(p, f"two metadata files are named {p.name} (the other: {found[p.name]})")
        found[p.name] = p
    return found


def fetch_metadata(dest: str | Path, *, scale: str | None = None, source: str | Path | None = None,
                   include_npz: bool = False, cache_dir: str | Path | None = None, overwrite: bool = False,
                   endpoint: str | None = None, revision: str | None = None,
                   drop_duplicate_uids: bool = False) -> dict[str, Any]:
    """Fill ``dest`` (a workspace's ``metadata/``) from the hub (``scale``) or a local folder (``source``).

    An existing non-empty ``dest`` is kept unless ``overwrite``. Every parquet is checked before it is
    placed (``metadata_checks``: CommonPool columns and types, valid and unique uids; repeated uids are
    refused, or dropped from the placed copies with ``drop_duplicate_uids``). Returns counts and where
    the files came from.
    """
    dest = Path(dest)
    if (scale is None) == (source is None):
        raise PoolsieveError("give exactly one of a scale (fetch from the hub) or a local metadata folder")
    existing = sorted(dest.glob("*.parquet")) if dest.is_dir() else []
    if existing and not overwrite:
        return {"skipped": True, "parquet": len(existing), "npz": len(list(dest.glob("*.npz"))),
                "source": str(dest)}
    if source is not None:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise InputError(folder, "metadata source folder does not exist")
        origin = str(folder)
    else:
        folder = snapshot_from_hub(scale, include_npz, Path(cache_dir) if cache_dir else None, endpoint, revision)
        origin = f"hf://datasets/{SCALES[scale]}"
    files = collect_files(folder, include_npz)
    parquets = [p for name, p in files.items() if name.endswith(".parquet")]
    if not parquets:
        raise InputError(folder, "no .parquet metadata files there")
    scan = scan_metadata(parquets)
    if not drop_duplicate_uids:
        scan.refuse_duplicates()
    if overwrite and dest.is_dir():
        for old in [*dest.glob("*.parquet"), *dest.glob("*.npz")]:
            old.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    for name, p in files.items():
        _place(p, dest / name)
    out = {"skipped": False, "parquet": len(parquets), "npz": len(files) - len(parquets), "source": origin}
    if drop_duplicate_uids:
        out["duplicate_uids_dropped"] = scan.drop_repeats(dest)
    return out
