"""A grid of pairs for a notebook: thumbnails cut from the pool's shards, caption and chosen scores.

The cards, thumbnails and escaping are the HTML report's own (``pipeline/inspect/grids.py``): a caption
or a column name from the pool is escaped exactly as the report escapes it, a thumbnail is decoded
only under the report's pixel limit and embedded as a JPEG data URI. ``PairGrid`` shows in Jupyter
(``_repr_html_``) and gives the same HTML as a standalone snippet (``html()``), its style scoped to its
own ``<div>`` so that it changes nothing else on the page it lands in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.inspect.grids import Card, grid_html, load_thumbnails
from poolsieve.pipeline.inspect.reasons import short_column

SCOPE = "poolsieve-pairs"
STYLE = f"""
.{SCOPE}{{font:12px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328}}
.{SCOPE} .grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:10px}}
.{SCOPE} .card{{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:6px;background:#fff}}
.{SCOPE} .card img,.{SCOPE} .card .no-image{{display:block;width:112px;height:112px;object-fit:contain;
margin:0 auto 4px;background:#f0f2f4}}
.{SCOPE} .card .no-image{{line-height:112px;text-align:center;color:#8c959f}}
.{SCOPE} .caption{{overflow-wrap:anywhere}}.{SCOPE} .score{{color:#0969da}}.{SCOPE} .note{{color:#57606a}}
"""


class PairGrid:
    """Pairs as cards: ``rows`` (dicts with ``shard``, ``key``, ``text`` and the ``score_columns``), in order."""

    def __init__(self, ws: Workspace, rows: Sequence[dict[str, Any]], score_columns: Sequence[str],
                 title: str = "", note: str = ""):
        self.title = title
        self.note = note
        self.cards = [Card(str(r["shard"]), str(r.get("key") or ""),
                           r["text"] if isinstance(r.get("text"), str) else "",
                           [(short_column(c), float(r[c])) for c in score_columns
                            if isinstance(r.get(c), (int, float)) and r[c] == r[c]])
                      for r in rows]
        self.thumbnails = load_thumbnails(ws, [(c.shard, c.key) for c in self.cards if c.key])

    def __len__(self) -> int:
        return len(self.cards)

    def html(self) -> str:
        """The grid as one self-contained HTML snippet (its style inline and scoped, images as data URIs)."""
        body = grid_html(self.title, self.cards, self.thumbnails, self.note)
        return f'<div class="{SCOPE}"><style>{STYLE}</style>{body}</div>'

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        return f"PairGrid({len(self)} pairs{': ' + self.title if self.title else ''})"
