"""Grids of example pairs: thumbnails read from the workspace's shards, with caption, score and reason.

Thumbnails are cut from the pool's own tars (the score table's ``key`` names the member; the tar index
is read once per shard, and only the chosen members' bytes), checked against a pixel limit before
decoding, shrunk, and embedded as small JPEG data URIs, so the page works from a copied folder. A pool
row that ``decontaminate`` dropped as a copy of an evaluation image shows that image beside its own, from
the thumbnail the reference file stores (``score --reference``); a reference made before thumbnails
were stored says so.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from poolsieve.core.errors import InputError
from poolsieve.core.formats import MAX_IMAGE_BYTES, read_reference_thumbnails
from poolsieve.core.shard_reader import IMAGE_EXTENSIONS
from poolsieve.core.shown_text import ATTRIBUTE_CHARS, for_html
from poolsieve.core.tar_io import read_index, split_key
from poolsieve.core.workspace import Workspace

THUMB_SIDE = 112
MAX_PIXELS = 64_000_000
CAPTION_CHARS = 90
NOT_STORED = "image not stored in the reference (re-run score --reference)"


@dataclass
class Card:
    """One example: where its image is, and the lines printed under it."""

    shard: str
    key: str
    caption: str
    scores: list[tuple[str, float]]
    label: str = ""
    reason: str = ""
    match: tuple[str | None, str] | None = None  # the evaluation image it copies: (data URI or None, caption)


def thumbnail_uri(data: bytes, side: int = THUMB_SIDE) -> str | None:
    """A small JPEG data URI of an image, or None when it cannot be decoded safely."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                return None
            img.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            img = img.convert("RGB")
            img.thumbnail((side, side))
            out = io.BytesIO()
            img.save(out, "JPEG", quality=72)
    except Exception:  # noqa: BLE001 - any image that fails to decode just has no thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def load_thumbnails(ws: Workspace, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """``(shard, key)`` -> data URI for the wanted samples found in ``shards/{shard}.tar``."""
    by_shard: dict[str, set[str]] = {}
    for shard, key in wanted:
        by_shard.setdefault(shard, set()).add(key)
    out: dict[tuple[str, str], str] = {}
    for shard, keys in sorted(by_shard.items()):
        tar = ws.shards_dir / f"{shard}.tar"
        try:
            members = read_index(tar)
        except InputError:
            continue  # a missing or damaged shard: its cards show no image
        found = {}
        for m in members:
            split = split_key(m.name)
            if split and split[1] in IMAGE_EXTENSIONS and Path(split[0]).name in keys:
                found.setdefault(Path(split[0]).name, m)
        if not found:
            continue
        fd = os.open(tar, os.O_RDONLY)
        try:
            for key, m in found.items():
                if m.size <= MAX_IMAGE_BYTES:
                    uri = thumbnail_uri(os.pread(fd, m.size, m.data_offset))
                    if uri is not None:
                        out[(shard, key)] = uri
        finally:
            os.close(fd)
    return out


def _card_html(card: Card, uri: str | None) -> str:
    caption = card.caption if len(card.caption) <= CAPTION_CHARS else card.caption[:CAPTION_CHARS - 1] + "…"
    image = (f'<img src="{uri}" alt="{for_html(card.caption, ATTRIBUTE_CHARS)}" loading="eager">' if uri
             else '<div class="no-image">no image</div>')
    scores = " · ".join(f"{for_html(name)} {value:.3f}" for name, value in card.scores)
    lines = [f'<div class="caption" title="{for_html(card.caption, ATTRIBUTE_CHARS)}">{for_html(caption) or "<i>(empty)</i>"}</div>']
    if scores:
        lines.append(f'<div class="score">{scores}</div>')
    if card.label:
        lines.append(f'<div class="label">label: {for_html(card.label)}</div>')
    if card.reason:
        lines.append(f'<div class="reason">{for_html(card.reason)}</div>')
    if card.match is None:
        return f'<figure class="card">{image}<figcaption>{"".join(lines)}</figcaption></figure>'
    match_uri, match_caption = card.match
    other = (f'<img src="{match_uri}" alt="{for_html(match_caption, ATTRIBUTE_CHARS)}" loading="eager">' if match_uri
             else f'<div class="no-image not-stored">{for_html(NOT_STORED)}</div>')
    images = (f'<div class="side"><div>{image}<div class="which">pool image</div></div>'
              f'<div>{other}<div class="which">evaluation image{": " + for_html(match_caption) if match_caption else ""}'
              '</div></div></div>')
    return f'<figure class="card match">{images}<figcaption>{"".join(lines)}</figcaption></figure>'


def attach_reference_images(ws: Workspace, cards: Sequence[Card], matched: dict[int, tuple[str, int, str]]) -> None:
    """Give each card ``i`` in ``matched`` (``(reference file relative to the workspace, its row, caption)``)
    the stored thumbnail of that evaluation image, or none (the card then says it is not stored)."""
    wanted: dict[str, set[int]] = {}
    for ref, row, _ in matched.values():
        wanted.setdefault(ref, set()).add(row)
    stored: dict[tuple[str, int], str] = {}
    for ref, rows in wanted.items():
        path = ws.root / ref
        try:
            blobs = read_reference_thumbnails(path, sorted(rows)) if path.is_file() else {}
        except InputError:
            blobs = {}  # a damaged reference file: the cards say the image is not there
        for row, data in blobs.items():
            uri = thumbnail_uri(data)
            if uri is not None:
                stored[(ref, row)] = uri
    for i, (ref, row, caption) in matched.items():
        cards[i].match = (stored.get((ref, row)), caption)


def grid_html(title: str, cards: Sequence[Card], thumbs: dict[tuple[str, str], str], note: str = "") -> str:
    """A titled grid of cards (``note`` under the title); an empty list says so."""
    head = f'<h4>{for_html(title)}</h4>' + (f'<p class="note">{for_html(note)}</p>' if note else "")
    if not cards:
        return head + '<p class="note">none in the sample</p>'
    return head + '<div class="grid">' + "".join(_card_html(c, thumbs.get((c.shard, c.key))) for c in cards) + "</div>"


def cards_from_rows(frame: Any, rows: Sequence[int], score_columns: Sequence[tuple[str, str]],
                    labels: dict[int, str], reasons: dict[int, str] | None = None) -> list[Card]:
    """Cards for ``rows`` of a sampled frame (``score_columns``: (column, shown name) pairs; ``labels`` and
    ``reasons`` by row)."""
    out = []
    for i in (int(r) for r in rows):
        row = frame.iloc[i]
        scores = [(shown, float(row[c])) for c, shown in score_columns if c in row and row[c] == row[c]]
        text = row.get("text")
        out.append(Card(str(row["shard"]), str(row.get("key", "")), text if isinstance(text, str) else "", scores,
                        labels.get(i, ""), (reasons or {}).get(i, "")))
    return out
