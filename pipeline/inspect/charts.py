"""Hand-written SVG charts for the HTML report: histograms, scatter plots and line charts.

Every chart has the same frame: a title, a plot area (``rect.plot-area``) with ticks and tick labels on
both axes, an axis title under the x axis and beside the y axis, and the legend in a column to the right
of the plot area, never over the data. Histograms of many subsets become small multiples: one small
panel per subset over the pool's outline, sharing their axes and one legend above them. A subset's
colour comes from its name alone, so it stays the same when subsets are added. Names and numbers are
escaped; nothing is fetched.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from poolsieve.core.shown_text import for_html

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f", "#ff9da7",
           "#bab0ac")
WIDTH, HEIGHT = 880, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 210, 30, 48  # the right margin holds the legend
LEGEND_CHARS, LEGEND_ROW = 25, 18
PANEL_WIDTH, PANEL_HEIGHT, PANEL_MARGINS = 272, 176, (52, 10, 30, 40)  # a small multiple (left, right, top, bottom)
PANEL_TITLE_CHARS = 22
MIN_HUE_GAP = 40  # subsets drawn over one another need colours this far apart (degrees of hue)


def height_for(legend_rows: int) -> int:
    """The chart's height: the usual one, or taller when the legend needs more rows."""
    return max(HEIGHT, MARGIN_TOP + 8 + LEGEND_ROW * legend_rows + MARGIN_BOTTOM)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * 0.999)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = first
    while v < hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def tick_label(value: float, step: float) -> str:
    """A tick's text: thousands as ``12k``, otherwise just the decimals the step needs."""
    if value == 0:
        return "0"
    if abs(step) >= 1000 and value % 1000 == 0:
        return f"{value / 1000:,.0f}k"
    decimals = max(0, -math.floor(math.log10(abs(step)) + 1e-9)) if step else 0
    if step and round(step * 10 ** decimals, 9) % 1:
        decimals += 1
    return f"{value:,.{decimals}f}"


def _along(v: float, ticks: list[float], start: float, end: float) -> float:
    """Where ``v`` falls between ``start`` (the first tick) and ``end`` (the last) on the page."""
    lo, hi = ticks[0], ticks[-1]
    return start + (v - lo) / ((hi - lo) or 1.0) * (end - start)


@dataclass
class Frame:
    """The x and y ranges of a chart and where its plot area lies (``margins``: left, right, top, bottom)."""

    x_ticks: list[float]
    y_ticks: list[float]
    width: int = WIDTH
    height: int = HEIGHT
    margins: tuple[int, int, int, int] = (MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM)

    @property
    def left(self) -> float:
        return self.margins[0]

    @property
    def right(self) -> float:
        return self.width - self.margins[1]

    @property
    def top(self) -> float:
        return self.margins[2]

    @property
    def bottom(self) -> float:
        return self.height - self.margins[3]

    def x(self, v: float) -> float:
        return _along(v, self.x_ticks, self.left, self.right)

    def y(self, v: float) -> float:
        return _along(v, self.y_ticks, self.bottom, self.top)


def _esc(text: object) -> str:
    return for_html(text)


def _frame_svg(frame: Frame, title: str, x_title: str, y_title: str, shown_title: str = "",
               extra_class: str = "") -> list[str]:
    """The chart's title (``shown_title`` in place of a long one; ``title`` is its label), plot area, grid
    lines, ticks with labels and the two axis titles."""
    f = frame
    out = [f'<svg class="chart{extra_class}" viewBox="0 0 {f.width} {f.height}" width="{f.width}" height="{f.height}" '
           f'role="img" aria-label="{_esc(title)}" xmlns="http://www.w3.org/2000/svg">',
           f'<text class="chart-title" x="{f.left}" y="18">{_esc(shown_title or title)}</text>',
           f'<rect class="plot-area" x="{f.left}" y="{f.top}" width="{f.right - f.left}" '
           f'height="{f.bottom - f.top}"/>']
    x_step = f.x_ticks[1] - f.x_ticks[0] if len(f.x_ticks) > 1 else 1.0
    y_step = f.y_ticks[1] - f.y_ticks[0] if len(f.y_ticks) > 1 else 1.0
    out.append('<g class="ticks x">')
    for v in f.x_ticks:
        px = f.x(v)
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{f.top}" x2="{px:.1f}" y2="{f.bottom + 4}"/>'
                   f'<text class="tick-label" x="{px:.1f}" y="{f.bottom + 17}" text-anchor="middle">'
                   f'{tick_label(v, x_step)}</text>')
    out.append('</g><g class="ticks y">')
    for v in f.y_ticks:
        py = f.y(v)
        out.append(f'<line class="grid" x1="{f.left - 4}" y1="{py:.1f}" x2="{f.right}" y2="{py:.1f}"/>'
                   f'<text class="tick-label" x="{f.left - 7}" y="{py + 4:.1f}" text-anchor="end">'
                   f'{tick_label(v, y_step)}</text>')
    out.append("</g>")
    mid_y = (f.top + f.bottom) / 2
    out.append(f'<text class="axis-title x" x="{(f.left + f.right) / 2:.1f}" y="{f.height - 10}" '
               f'text-anchor="middle">{_esc(x_title)}</text>')
    out.append(f'<text class="axis-title y" x="14" y="{mid_y:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {mid_y:.1f})">{_esc(y_title)}</text>')
    return out


@dataclass
class LegendEntry:
    label: str
    colour: str
    kind: str = "line"  # line, dashed, area, dot


def _legend_svg(frame: Frame, entries: Sequence[LegendEntry]) -> str:
    """A column of swatches and labels right of the plot area (long labels shortened, full text on hover)."""
    x0 = frame.right + 16
    out = ['<g class="legend">']
    for i, e in enumerate(entries):
        y = frame.top + 8 + LEGEND_ROW * i
        if e.kind == "area":
            swatch = f'<rect x="{x0}" y="{y - 6}" width="18" height="10" fill="{e.colour}" opacity="0.45"/>'
        elif e.kind == "dot":
            swatch = f'<circle cx="{x0 + 9}" cy="{y - 1}" r="4" fill="{e.colour}"/>'
        else:
            dash = ' stroke-dasharray="5 3"' if e.kind == "dashed" else ""
            swatch = (f'<line x1="{x0}" y1="{y - 1}" x2="{x0 + 18}" y2="{y - 1}" stroke="{e.colour}" '
                      f'stroke-width="2"{dash}/>')
        label = e.label if len(e.label) <= LEGEND_CHARS else e.label[:LEGEND_CHARS - 1] + "…"
        out.append(f'<g class="legend-item"><title>{_esc(e.label)}</title>{swatch}'
                   f'<text x="{x0 + 24}" y="{y + 3}">{_esc(label)}</text></g>')
    out.append("</g>")
    return "".join(out)


@dataclass
class Series:
    name: str
    values: np.ndarray  # histogram: share per bin; line: y values
    x: np.ndarray | None = None


def histogram_svg(title: str, edges: np.ndarray, pool: np.ndarray, subsets: Sequence[Series],
                  thresholds: Sequence[tuple[str, float]] = (), x_title: str = "score",
                  y_title: str = "share of pool (%)") -> str:
    """The pool's distribution as a shaded area, each subset's part of it as a step line, and dashed
    vertical lines at the thresholds (``(label, value)``); heights are percentages of the pool."""
    top = max([float(pool.max()) if len(pool) else 0.0] + [float(s.values.max()) for s in subsets if len(s.values)])
    frame = Frame(nice_ticks(float(edges[0]), float(edges[-1]), 6), nice_ticks(0.0, top or 1.0, 4),
                  height=height_for(1 + len(subsets) + len(thresholds)))
    out = _frame_svg(frame, title, x_title, y_title)  # the ticks' range covers the bins and the heights
    out.append('<g class="data">')
    out.append(f'<polygon class="pool" fill="#9aa5b1" opacity="0.45" points="{_steps(frame, edges, pool)}"/>')
    legend = [LegendEntry("pool", "#9aa5b1", "area")]
    for s in subsets:
        colour = subset_colour(s.name)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{_steps(frame, edges, s.values)}"/>')
        legend.append(LegendEntry(s.name, colour))
    names = [s.name for s in subsets]
    for label, value in thresholds:
        colour = subset_colour(label) if label in names else "#333"
        px = frame.x(value)
        out.append(f'<line class="threshold" x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" y2="{frame.bottom}" '
                   f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="5 3"/>')
        legend.append(LegendEntry(f"{label} ≥ {value:.3f}", colour, "dashed"))
    out.append("</g>")
    out.append(_legend_svg(frame, legend))
    out.append("</svg>")
    return "".join(out)


def subset_colour(name: str) -> str:
    """The colour of a subset, fixed by its name alone (a hue from the name's crc32): the same in every
    chart and every render, whatever subsets are added beside it."""
    r, g, b = colorsys.hls_to_rgb(subset_hue(name) / 360, 0.42, 0.62)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def subset_hue(name: str) -> int:
    return zlib.crc32(name.encode("utf-8", "replace")) % 360


def distinct_hues(names: Sequence[str], degrees: int = MIN_HUE_GAP) -> bool:
    """Whether every two of ``names`` have colours at least ``degrees`` apart on the colour wheel."""
    hues = sorted(subset_hue(n) for n in names)
    gaps = [b - a for a, b in zip(hues, hues[1:], strict=False)] + ([360 - hues[-1] + hues[0]] if len(hues) > 1 else [])
    return all(g >= degrees for g in gaps)


def _steps(frame: Frame, edges: np.ndarray, counts: np.ndarray) -> str:
    """A histogram's outline as polygon points, from the baseline up each bin and back down."""
    pts = [(frame.x(float(edges[0])), frame.y(0.0))]
    for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
        pts += [(frame.x(float(lo)), frame.y(float(c))), (frame.x(float(hi)), frame.y(float(c)))]
    pts.append((frame.x(float(edges[-1])), frame.y(0.0)))
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)


def histogram_panel_svg(name: str, detail: str, edges: np.ndarray, pool: np.ndarray, subset: np.ndarray,
                        thresholds: Sequence[float], x_title: str, y_title: str, y_top: float) -> str:
    """One small multiple: the pool's outline in grey, the subset's part filled in its colour, its own
    thresholds dashed; every panel of a figure shares the x range and ``y_top``."""
    frame = Frame(nice_ticks(float(edges[0]), float(edges[-1]), 4), nice_ticks(0.0, y_top or 1.0, 3),
                  PANEL_WIDTH, PANEL_HEIGHT, PANEL_MARGINS)
    shown = name if len(name) <= PANEL_TITLE_CHARS else name[:PANEL_TITLE_CHARS - 1] + "…"
    out = _frame_svg(frame, f"{name}: {detail}", x_title, y_title, f"{shown} · {detail}", " panel")
    colour = subset_colour(name)
    out.append(f'<g class="data"><polygon class="subset" fill="{colour}" fill-opacity="0.55" stroke="{colour}" '
               f'stroke-width="1" points="{_steps(frame, edges, subset)}"/>'
               f'<polygon class="pool" fill="none" stroke="#6e7781" stroke-width="1" points="{_steps(frame, edges, pool)}"/>')
    for value in thresholds:
        px = frame.x(value)
        out.append(f'<line class="threshold" x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" y2="{frame.bottom}" '
                   f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="4 3"/>')
    out.append("</g></svg>")
    return "".join(out)


def small_multiples_html(title: str, edges: np.ndarray, pool: np.ndarray, subsets: Sequence[Series],
                         details: dict[str, str], thresholds: Sequence[tuple[str, float]], x_title: str,
                         y_title: str) -> str:
    """A figure of one small histogram per subset over the pool's outline, with one legend for all."""
    top = float(pool.max()) if len(pool) else 1.0
    panels = [histogram_panel_svg(s.name, details.get(s.name, ""), edges, pool, s.values,
                                  [v for n, v in thresholds if n == s.name], x_title, y_title, top) for s in subsets]
    legend = ('<span class="swatch pool"></span>pool (all panels share its outline and scale)'
              '<span class="swatch subset"></span>the subset\'s part, in its colour'
              '<span class="swatch threshold"></span>its threshold')
    return (f'<figure class="multiples" aria-label="{_esc(title)}"><figcaption>{_esc(title)}</figcaption>'
            f'<div class="multiples-legend">{legend}</div><div class="panels">{"".join(panels)}</div></figure>')


def scatter_svg(title: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray, x_title: str, y_title: str) -> str:
    """Points coloured by group (legend: group and count), ranges from the 0.5% and 99.5% quantiles."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, groups = x[ok], y[ok], groups[ok]
    if not len(x):
        x = y = np.zeros(1)
        groups = np.array(["-"], dtype=object)
    x_lo, x_hi = np.quantile(x, [0.005, 0.995])
    y_lo, y_hi = np.quantile(y, [0.005, 0.995])
    names, counts = np.unique(groups.astype(str), return_counts=True)
    frame = Frame(nice_ticks(float(x_lo), float(x_hi), 6), nice_ticks(float(y_lo), float(y_hi), 5),
                  height=height_for(len(names)))
    out = _frame_svg(frame, title, x_title, y_title)
    order = [n for _, n in sorted(zip(-counts, names, strict=True))]
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(order)}
    out.append('<g class="data">')
    x_min, x_max, y_min, y_max = frame.x_ticks[0], frame.x_ticks[-1], frame.y_ticks[0], frame.y_ticks[-1]
    for xv, yv, g in zip(np.clip(x, x_min, x_max), np.clip(y, y_min, y_max), groups.astype(str), strict=True):
        out.append(f'<circle cx="{frame.x(float(xv)):.1f}" cy="{frame.y(float(yv)):.1f}" r="2" '
                   f'fill="{colour[g]}" opacity="0.6"/>')
    out.append("</g>")
    count = dict(zip(names, counts, strict=True))
    out.append(_legend_svg(frame, [LegendEntry(f"{n} ({count[n]:,})", colour[n], "dot") for n in order]))
    out.append("</svg>")
    return "".join(out)


def line_chart_svg(title: str, series: Sequence[Series], x_title: str, y_title: str) -> str:
    """One polyline per series (``x`` and ``values``), with a legend of series names."""
    xs = np.concatenate([s.x for s in series if s.x is not None and len(s.x)] or [np.zeros(1)])
    ys = np.concatenate([s.values for s in series if len(s.values)] or [np.zeros(1)])
    ys = ys[np.isfinite(ys)] if np.isfinite(ys).any() else np.zeros(1)
    frame = Frame(nice_ticks(0.0, float(xs.max()) or 1.0, 6), nice_ticks(min(0.0, float(ys.min())), float(ys.max()), 5),
                  height=height_for(len(series)))
    out = _frame_svg(frame, title, x_title, y_title)
    out.append('<g class="data">')
    legend = []
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{frame.x(float(a)):.1f},{frame.y(float(b)):.1f}"
                       for a, b in zip(s.x if s.x is not None else [], s.values, strict=True) if np.isfinite(b))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{pts}"/>')
        legend.append(LegendEntry(s.name, colour))
    out.append("</g>")
    out.append(_legend_svg(frame, legend))
    out.append("</svg>")
    return "".join(out)
