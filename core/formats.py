"""Every file format poolsieve reads or writes, in one place.

Formats follow DataComp wherever DataComp defines one, so that its users switch without converting:

* pool metadata: CommonPool parquet columns (``uid`` as 32 hex chars, ``url``, ``text``, sizes, ...);
* subset files: ``np.dtype("u8,u8")`` pairs ``(int(uid[:16], 16), int(uid[16:], 16))``, sorted (uids
  themselves, as ``UidSet``, are ``core/uids.py``'s);
* embeddings: ``.npz`` with ``<model>_img`` / ``<model>_txt`` fp16 arrays (``b32`` / ``l14`` for the
  OpenAI ViT-B-32 / ViT-L-14 models), row-aligned with the parquet score table;
* score columns: ``clip_<model>_similarity_score`` (DataComp's metadata names for b32 / l14);
* shard names: pool shards ``{:05d}.tar`` (img2dataset), filtered shards ``{:08d}.tar`` (resharder);
* what a shard sample may hold: an image member of at most ``MAX_IMAGE_BYTES`` (the download's cap), a
  caption of which the first ``MAX_CAPTION_BYTES`` are used, a ``.json`` of at most ``MAX_SAMPLE_JSON_BYTES``.

Every reader here opens its file with ``core/untrusted_files.open_regular``: a FIFO, device or folder in
a table's place is refused in one line, never waited on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .uids import (
    SUBSET_DTYPE,
    UidSet,
    hex_to_keys,
    keys_to_hex,
    keys_to_pairs,
    pairs_to_keys,
    sort_keys,
)
from .untrusted_files import open_regular

# ------------------------------------------------------------------------------------ subsets
# uids are decoded, sorted and compared in core/uids.py; a subset file is where they become DataComp's pairs.


def write_subset(path: str | Path, uids: UidSet | np.ndarray, *, allow_repeats: bool = False) -> Path:
    """Write a DataComp subset file: sorted ``u8,u8`` pairs of a ``UidSet`` (written as is), or of
    ``u8,u8`` pairs given in any order (sorted here; unique unless ``allow_repeats``)."""
    if isinstance(uids, UidSet):
        pairs = uids.to_pairs()
    else:
        pairs = np.asarray(uids)
        if pairs.dtype != SUBSET_DTYPE:
            raise InputError(path, f"subset dtype is {pairs.dtype}, expected {SUBSET_DTYPE}")
        pairs = keys_to_pairs(sort_keys(pairs_to_keys(pairs), unique=not allow_repeats))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, pairs)
    return Path(path)


def validate_subset(pairs: np.ndarray, path: str | Path | None = None, *, allow_repeats: bool = False) -> None:
    if pairs.dtype != SUBSET_DTYPE:
        raise InputError(path, f"subset dtype is {pairs.dtype}, expected {SUBSET_DTYPE} (DataComp's uid format)")
    if pairs.ndim != 1:
        raise InputError(path, f"subset must be one-dimensional, got shape {pairs.shape}")
    if len(pairs) < 2:
        return
    keys = pairs_to_keys(pairs)
    decreasing = keys[1:] < keys[:-1]
    if decreasing.any():
        i = int(np.flatnonzero(decreasing)[0]) + 1
        raise InputError(path, f"subset is not sorted: row {i} is smaller than row {i - 1}")
    if not allow_repeats:
        equal = keys[1:] == keys[:-1]
        if equal.any():
            i = int(np.flatnonzero(equal)[0]) + 1
            raise InputError(path, f"subset has a repeated uid at row {i} ({keys_to_hex(keys[i:i + 1])[0]})")


def read_subset(path: str | Path, *, allow_repeats: bool = False) -> np.ndarray:
    """Load and validate a subset file (dtype, 1-d, sorted, unique unless ``allow_repeats``): its pairs."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "subset file does not exist")
    try:
        with open_regular(path) as f:
            pairs = np.load(f, allow_pickle=False)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable .npy file ({e})") from None
    validate_subset(pairs, path, allow_repeats=allow_repeats)
    return pairs


def read_uidset(path: str | Path) -> UidSet:
    """A subset file as a ``UidSet`` (validated: sorted and unique, so taken as is)."""
    return UidSet.from_pairs(read_subset(path), sorted_unique=True)


# ----------------------------------------------------------------------------------- metadata
METADATA_REQUIRED = ("uid", "url", "text")


def parquet_files(folder: str | Path, what: str = "metadata") -> list[Path]:
    """The ``*.parquet`` files of ``folder`` (hidden ones skipped), sorted; an error names the folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(folder, f"{what} folder does not exist")
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise InputError(folder, f"no .parquet files in the {what} folder")
    return files


def metadata_files(folder: str | Path) -> list[Path]:
    return parquet_files(folder, "metadata")


def check_metadata_columns(path: str | Path, columns: Iterable[str], required: Sequence[str] = METADATA_REQUIRED) -> None:
    cols = set(columns)
    missing = [c for c in required if c not in cols]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; CommonPool metadata needs {', '.join(required)}")


def read_metadata(path: str | Path, columns: Sequence[str] | None = None, required: Sequence[str] = METADATA_REQUIRED):
    """Read one metadata parquet as a pandas DataFrame, checking the schema and the uid format."""
    path = Path(path)
    with open_regular(path) as f:
        try:
            schema = pq.read_schema(f)
        except Exception as e:  # noqa: BLE001
            raise InputError(path, f"not a readable parquet file ({e})") from None
        check_metadata_columns(path, schema.names, required)
        f.seek(0)
        table = pq.read_table(f, columns=list(columns) if columns else None)
    df = table.to_pandas()
    if "uid" in df.columns:
        hex_to_keys(df["uid"].to_numpy(), source=path)
    return df


# --------------------------------------------------------------------------- score tables & npz
# Model keys that DataComp names; any other model gets a sanitised name of its own.
DATACOMP_MODEL_KEYS = {("ViT-B-32", "openai"): "b32", ("ViT-L-14", "openai"): "l14"}


def model_key(arch: str, pretrained: str | None) -> str:
    """Short key naming a model's columns: ``b32`` / ``l14`` as DataComp does, else sanitised."""
    key = DATACOMP_MODEL_KEYS.get((arch, pretrained or ""))
    if key:
        return key
    return re.sub(r"[^0-9a-z]+", "_", arch.lower()).strip("_")


def score_column(key: str) -> str:
    """Score column for a model key: DataComp's ``clip_b32_similarity_score`` naming."""
    return f"clip_{key}_similarity_score"


def embedding_keys(key: str) -> tuple[str, str]:
    return f"{key}_img", f"{key}_txt"


# A score table ``scores/{shard}.parquet`` has one row per sample of ``shards/{shard}.tar``, and its npz
# ``scores/{shard}.npz`` the same rows in the same order. Rows are sorted by the sample's key (img2dataset's
# ``{shard}{row}``, zero-padded: the order of the pool's metadata rows), never in the order the tar holds
# them (the order the download's fetches finished in), so two downloads of one pool give the same tables;
# an encoder's batches are cut in that order too, so no embedding depends on the download order either.
# Tables written before rows were sorted keep their tar order (a model added to them follows it).
# ``--import-datacomp`` tables keep the metadata file's row order.
SCORE_TABLE_BASE_COLUMNS = (
    "uid",
    "key",
    "text",
    "original_width",
    "original_height",
    "width",
    "height",
    "sha256",
    "caption_length",
    "caption_words",
    "language",
    "language_score",
    "status",
    "error",
    "phash",
)
# ``phash``: the image's 64-bit perceptual hash (uint64; ``pipeline/score/phash.py``), null where the image did
# not decode or (DataComp imports) is not there. Tables scored before it lack it: readers take it as optional.
PHASH_COLUMN = "phash"

# A reference set ``references/{name}.npz`` (``score --reference``): ``<key>_img`` embeddings per model,
# ``labels``, ``sources`` and ``sha256`` per image, ``phash`` (uint64) with ``phash_valid`` (bool: False
# where the hash could not be made), and a small JPEG thumbnail per image packed into ``thumbnails``
# (uint8, all the JPEGs end to end) and ``thumbnail_offsets`` (int64, n + 1: image i is
# ``thumbnails[offsets[i]:offsets[i + 1]]``), so the npz loads with ``allow_pickle=False``. Files made
# before these keys lack them.
REFERENCE_PHASH = "phash"
REFERENCE_PHASH_VALID = "phash_valid"
REFERENCE_THUMBNAILS = "thumbnails"
REFERENCE_THUMBNAIL_OFFSETS = "thumbnail_offsets"

# A score table's parquet metadata: {model key: the model that made its columns} (``ARCH[:TAG|CHECKPOINT]``),
# and, when the table's ``language`` column was computed, the fastText model that made it:
# {"file": its file name, "sha256": its digest} (``core/language.lid_model_sha256``).
MODELS_METADATA = b"poolsieve.models"
LANGUAGE_MODEL_METADATA = b"poolsieve.language_model"

# The score table's ``status`` values: a sample whose image decoded (img2dataset's word for a fetched
# sample in its shard parquets too), or one that did not (``error`` says why). Pool members are the
# ``STATUS_SUCCESS`` rows.
STATUS_SUCCESS = "success"
STATUS_DECODE_ERROR = "decode_error"
STATUS_TOO_LARGE = "too_large"  # the image member is over MAX_IMAGE_BYTES: never read, not a pool member
# ``error`` says why a row is not a pool member; on a success row it notes what was cut (a caption over
# MAX_CAPTION_BYTES: CAPTION_TRUNCATED, then the caption's full size).
CAPTION_TRUNCATED = "caption truncated"

# What a pool shard's sample may hold. The download refuses images over MAX_IMAGE_BYTES, so a larger
# member was not made by it: readers record the row and never read the member. A caption is cut to its
# first MAX_CAPTION_BYTES (UTF-8, on a character boundary) before anything reads it (ftfy, the tokenizers,
# fastText): CLIP's tokenizers keep 77 tokens, about 300 characters, so 4 KiB changes no score, and a
# 50 MB caption costs what a 4 KiB one does. A sample's ``.json`` (img2dataset's, exif included) over
# MAX_SAMPLE_JSON_BYTES is refused with its shard.
MAX_IMAGE_BYTES = 32 << 20
MAX_CAPTION_BYTES = 4 << 10
MAX_SAMPLE_JSON_BYTES = 1 << 20
_INT32_MAX = 2**31 - 1


def pixel_count_or_none(value: Any) -> int | None:
    """A width or height from a sample's json as the score table stores it (int32), or None when it is
    not one: missing, not a number (a string, a bool), not finite, not a whole number, negative, or too
    large for int32 (``Infinity``, ``1e30``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if isinstance(value, (float, np.floating)) and not (math.isfinite(value) and float(value).is_integer()):
        return None
    number = int(value)
    return number if 0 <= number <= _INT32_MAX else None



def score_table_schema(model_keys: Iterable[str], float64_keys: Iterable[str] = ()) -> Any:
    """The score table's arrow schema: the same types in every shard, empty ones included.

    Score columns are float32 (what ``score`` computes), except those of ``float64_keys``: scores
    imported from a float64 source stay float64, so every cut equals the source's own."""
    types = {"original_width": pa.int32(), "original_height": pa.int32(), "width": pa.int32(), "height": pa.int32(),
             "caption_length": pa.int64(), "caption_words": pa.int64(), "language_score": pa.float32(),
             PHASH_COLUMN: pa.uint64()}
    fields = [pa.field(name, types.get(name, pa.string())) for name in SCORE_TABLE_BASE_COLUMNS]
    wide = set(float64_keys)
    return pa.schema(fields + [pa.field(score_column(key), pa.float64() if key in wide else pa.float32())
                               for key in model_keys])

def read_score_table(path: str | Path, columns: Sequence[str] | None = None):
    """Read one score table (pandas). Checks that ``uid`` exists and the requested columns exist."""
    path = Path(path)
    with open_regular(path) as f:
        try:
            names = pq.read_schema(f).names
        except Exception as e:  # noqa: BLE001
            raise InputError(path, f"not a readable parquet score table ({e})") from None
        want = list(columns) if columns else names
        missing = [c for c in ["uid", *want] if c not in names]
        if missing:
            raise InputError(path, f"score table lacks column(s) {', '.join(dict.fromkeys(missing))}")
        f.seek(0)
        table = pq.read_table(f, columns=want)
    return table.to_pandas()


def recorded_language_model(path: str | Path) -> dict[str, str] | None:
    """The language-id model a score table records (``{"file", "sha256"}``), or None when it records none
    (``--no-language``, or a table written before the record)."""
    path = Path(path)
    with open_regular(path) as f:
        try:
            meta = pq.read_schema(f).metadata or {}
        except Exception as e:  # noqa: BLE001
            raise InputError(path, f"not a readable parquet score table ({e})") from None
    try:
        record = json.loads(meta[LANGUAGE_MODEL_METADATA])
    except (KeyError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {str(k): str(v) for k, v in record.items()}


def read_embeddings(npz_path: str | Path, keys: Sequence[str], n_rows: int | None = None) -> dict[str, np.ndarray]:
    """Load embedding arrays from an npz, checking they exist and align with ``n_rows`` parquet rows."""
    npz_path = Path(npz_path)
    if not npz_path.exists():
        raise InputError(npz_path, "embedding file does not exist")
    try:
        with open_regular(npz_path) as f, np.load(f, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise InputError(npz_path, f"missing embedding key(s) {', '.join(missing)}; has {', '.join(z.files)}")
            out = {k: z[k] for k in keys}
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(npz_path, f"not a readable .npz file ({e})") from None
    for k, v in out.items():
        if v.ndim != 2:
            raise InputError(npz_path, f"embedding {k} has shape {v.shape}, expected (rows, dim)")
        if n_rows is not None and v.shape[0] != n_rows:
            raise InputError(npz_path, f"embedding {k} has {v.shape[0]} rows but the score table has {n_rows}: misaligned")
    return out


def pack_blobs(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings end to end as ``(uint8 data, int64 offsets of n + 1)``: an npz's array of blobs that loads
    without pickle."""
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def unpack_blob(data: np.ndarray, offsets: np.ndarray, row: int) -> bytes | None:
    """Blob ``row`` of ``pack_blobs``' arrays, or None when the row or its offsets are out of range (a hostile
    or damaged file)."""
    if data.ndim != 1 or offsets.ndim != 1 or not 0 <= row < len(offsets) - 1:
        return None
    lo, hi = int(offsets[row]), int(offsets[row + 1])
    if not 0 <= lo <= hi <= len(data):
        return None
    return data[lo:hi].tobytes()


def read_reference_thumbnails(path: str | Path, rows: Iterable[int]) -> dict[int, bytes]:
    """The stored thumbnails (JPEG bytes) of reference images ``rows`` of a reference npz; rows without one,
    and every row of a file made before thumbnails were stored, are left out."""
    try:
        with open_regular(Path(path)) as f, np.load(f, allow_pickle=False) as z:
            if REFERENCE_THUMBNAILS not in z.files or REFERENCE_THUMBNAIL_OFFSETS not in z.files:
                return {}
            data, offsets = z[REFERENCE_THUMBNAILS], z[REFERENCE_THUMBNAIL_OFFSETS]
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, f"not a readable reference .npz file ({e})") from None
    if data.dtype != np.uint8 or not np.issubdtype(offsets.dtype, np.integer):
        return {}
    out = {}
    for row in rows:
        blob = unpack_blob(data, offsets, int(row))
        if blob:
            out[int(row)] = blob
    return out


def read_npy_header(f: Any, path: str | Path, problem: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the ``.npy`` whose magic starts at ``f``'s position (``f`` is left at
    its data); a header that is not one (hostile or cut short) is ``InputError(path, "<problem> (why)")``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = read(f)
    except Exception as e:  # noqa: BLE001 - numpy raises several kinds on a malformed header: all bad input
        raise InputError(path, f"{problem} ({e})") from None
    return tuple(shape), bool(fortran), dtype


def write_embeddings(npz_path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(npz_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v, dtype=np.float16) for k, v in arrays.items()})


# ------------------------------------------------------------------------------------- shards
def filtered_shard_name(index: int) -> str:
    """DataComp resharder's shard name: ``00000012``."""
    return f"{index:08d}"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- atomic writing
_UMASK = os.umask(0)
os.umask(_UMASK)
DIR_MODE = 0o777 & ~_UMASK  # what mkdir would give; mkdtemp gives 0700


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; shared clusters need the usual permissions
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        if e.filename is None and e.errno is not None:  # a write or close: say which file (no space, ...)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file's value; ``InputError`` if it is missing, not a regular file or not valid JSON."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e})") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
