"""The member kinds poolsieve reads, copies or decodes from a shard or task tar: an explicit allow-list.

A webdataset sample is the run of members sharing a key; a member's kind is its extension (``jpg``,
``txt``, ...). Only the kinds below are ever read, copied into training shards or decoded, and only
with decoders that cannot run code (PIL for images, UTF-8 for text, ``json.loads``, ``int`` for class
labels, numpy's ``.npy`` reader with ``allow_pickle=False`` for arrays). Everything else (``pyd``,
``pickle``, ``pth``, ``npz``, ``mp``, ...) is skipped and counted, never unpickled: webdataset's default
handlers would unpickle ``.pyd``/``.pickle`` members and ``torch.load`` ``.pth`` ones, which runs any
code a shard's author put there. ``core/safe_decoding.py`` holds the decoders.
"""

from __future__ import annotations

IMAGE_KINDS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TEXT_KINDS = ("txt",)
JSON_KINDS = ("json",)
LABEL_KINDS = ("cls",)  # a class index written as decimal text (clip_benchmark's and DataComp's eval sets)
ARRAY_KINDS = ("npy",)  # DataComp's WILDS / fairness metadata and multilabel targets; never unpickled
ALLOWED_KINDS = frozenset(IMAGE_KINDS + TEXT_KINDS + JSON_KINDS + LABEL_KINDS + ARRAY_KINDS)


def is_allowed_kind(ext: str) -> bool:
    """Whether members with this (lower-case) extension are read, copied or decoded at all."""
    return ext in ALLOWED_KINDS
