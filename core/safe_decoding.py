"""Decoding webdataset samples without ever running code from them: the one place training and evaluation
get their decoders from.

webdataset's default handlers unpickle ``.pyd``/``.pickle`` members, ``torch.load`` ``.pth`` ones with
``weights_only=False`` (both run any code the shard's author put there), read msgpack, cbor, npz and
tenbin, and gunzip ``.gz`` members first. open_clip's training loader (``wds.decode("pilrgb")``) and
clip_benchmark's webdataset loader build their decoders with those defaults, in code poolsieve does not
own. Here, only the member kinds of ``core.member_kinds`` are decoded, each by a decoder that cannot run
code; any other member keeps its raw bytes (never decoded):

* ``decode_member(kind, data)``: UTF-8 for ``txt``, ``json.loads``, ``int`` for ``cls``, numpy's ``.npy``
  reader with ``allow_pickle=False``; ``None`` for images (PIL's, through webdataset's image handler) and
  for every kind not allowed.
* ``safe_handler``: the same as a webdataset handler ``(key, data) -> value or None``.
* ``install_safe_decoding()``: from then on, every webdataset decoder this process (and the data-loader
  workers it starts) builds is safe, whoever builds it: webdataset's default pre-handlers (``.gz``) are
  dropped, its default post-handler is ``safe_handler``, its table of decoders keeps only the safe
  entries, ``wds.decode`` builds decoders from ``safe_handler`` alone (images limited to the allowed
  kinds), and a ``.pth`` would load with ``weights_only=True``. Call it before building a pipeline.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy.lib.format

from .member_kinds import ARRAY_KINDS, IMAGE_KINDS, JSON_KINDS, LABEL_KINDS, TEXT_KINDS


def _npy(data: bytes) -> Any:
    return numpy.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


_DECODERS = {
    **{kind: lambda data: bytes(data).decode("utf-8") for kind in TEXT_KINDS},
    **{kind: json.loads for kind in JSON_KINDS},
    **{kind: int for kind in LABEL_KINDS},
    **{kind: _npy for kind in ARRAY_KINDS},
}


def decode_member(kind: str, data: bytes) -> Any | None:
    """``data`` of a member of ``kind`` decoded, or ``None`` (an image, or a kind that is never decoded)."""
    decoder = _DECODERS.get(kind.lower())
    return None if decoder is None else decoder(data)


def safe_handler(key: str, data: bytes) -> Any | None:
    """A webdataset handler: ``key`` is ``.ext`` or ``.seg.ext``; the last extension names the kind."""
    return decode_member(key.rsplit(".", 1)[-1], data)


def _image_handler(spec: Any) -> Any:
    from webdataset.autodecode import ImageHandler

    return ImageHandler(spec, extensions=list(IMAGE_KINDS)) if isinstance(spec, str) else spec


def _safe_decode_stage(data: Any, *args: Any, handler: Any = None, **kw: Any) -> Any:
    """``wds.decode``'s pipeline stage with only safe handlers (``handler``: webdataset's error handler)."""
    from webdataset.autodecode import Decoder
    from webdataset.filters import reraise_exception

    handler = handler or reraise_exception
    kw.pop("pre", None)
    kw.pop("post", None)
    decoder = Decoder([_image_handler(a) for a in args], pre=[], post=[safe_handler], **kw)
    for sample in data:
        try:
            decoded = decoder(sample)
        except Exception as exn:  # noqa: BLE001 - webdataset's contract: the handler decides (skip or raise)
            if handler(exn):
                continue
            break
        yield decoded


_installed = False


def install_safe_decoding() -> None:
    """Make every webdataset decoder built from now on in this process safe (idempotent)."""
    global _installed
    if _installed:
        return
    import webdataset
    from webdataset import autodecode, filters

    autodecode.pytorch_weights_only = True
    autodecode.decoders.clear()  # what ``basichandlers`` (and any decoder already built with it) looks up
    autodecode.decoders.update(_DECODERS)
    autodecode.default_pre_handlers[:] = []
    autodecode.default_post_handlers[:] = [safe_handler]
    filters.default_decoders[:] = [(pattern, f) for pattern, f in filters.default_decoders
                                   if f is not filters.decode_pickle]
    safe_decode = filters.pipelinefilter(_safe_decode_stage)
    filters.decode = safe_decode
    webdataset.decode = safe_decode
    _installed = True
