"""Score histograms stay readable with many subsets (issue 26, item 4): small multiples, one panel per
subset over the pool's outline, and each subset's colour fixed by its name."""

from __future__ import annotations

import re

from test_inspect import make_scored_workspace

from poolsieve.pipeline.cli import main
from poolsieve.pipeline.inspect.charts import MIN_HUE_GAP, distinct_hues, subset_colour, subset_hue

FRACTIONS = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)


def filter_subsets(ws, names_and_fractions) -> None:
    spec = ws.root / "spec.yaml"
    spec.write_text("".join(f"{name}: {{clip_score: {{fraction: 0.{f:02d}}}}}\n" for name, f in names_and_fractions))
    assert main(["filter", "-w", str(ws.root), "--executor", "local", "--spec", str(spec), "--overwrite"]) == 0


def render(ws) -> str:
    assert main(["inspect", "-w", str(ws.root), "--executor", "local", "--html"]) == 0
    return (ws.report_dir / "index.html").read_text()


def panels(page: str) -> dict[str, str]:
    """Subset name -> the SVG of its small multiple."""
    return {m.group(1).rsplit(": keeps", 1)[0]: m.group(0) for m in
            re.finditer(r'<svg class="chart panel"[^>]*aria-label="([^"]*)".*?</svg>', page)}


def test_a_subsets_colour_comes_from_its_name_alone():
    assert subset_colour("clip30") == subset_colour("clip30") == "#ae6b29"  # crc32, not Python's salted hash()
    assert subset_hue("clip30") == 30 and len({subset_colour(f"clip{f}") for f in FRACTIONS}) == len(FRACTIONS)
    assert distinct_hues(["clip30", "dedup"]) and not distinct_hues(["clip30", "basic_clip"])  # 30 vs 28 degrees
    assert abs(subset_hue("clip30") - subset_hue("dedup")) >= MIN_HUE_GAP


def test_ten_subsets_become_small_multiples_with_colours_that_stay(tmp_path, capsys):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    filter_subsets(ws, [(f"clip{f:02d}", f) for f in FRACTIONS[:3]])
    three = panels(render(ws))
    filter_subsets(ws, [(f"clip{f:02d}", f) for f in FRACTIONS])
    page = render(ws)
    capsys.readouterr()
    assert "draw the first" not in page  # no subset is left out any more
    figure = page[page.index('<figure class="multiples"'):page.index("</figure>")]
    assert "clip_b32_similarity_score: distribution in the pool and in each subset" in figure
    assert 'class="multiples-legend"' in figure
    ten = panels(page)
    assert sorted(ten) == sorted(["top", *(f"clip{f:02d}" for f in FRACTIONS)])  # every subset, one panel each
    for name, svg in ten.items():
        colour = subset_colour(name)
        assert f'<polygon class="subset" fill="{colour}"' in svg and '<polygon class="pool"' in svg, name
        if name != "top":  # a clip_score subset draws its own threshold, in its own colour, and no other
            assert svg.count('class="threshold"') == 1 and f'stroke="{colour}" stroke-width="1.5"' in svg, name
    # one x range and y scale in every panel: the pool's outline is the same polygon everywhere
    outlines = {re.search(r'<polygon class="pool"[^>]*points="([^"]*)"', svg).group(1) for svg in ten.values()}
    assert len(outlines) == 1
    for name, svg in three.items():  # adding seven subsets changed no colour of the first ones
        assert f'fill="{subset_colour(name)}"' in svg and f'fill="{subset_colour(name)}"' in ten[name]


def test_few_subsets_far_apart_in_colour_share_one_chart(tmp_path, capsys):
    ws, _, _ = make_scored_workspace(tmp_path / "ws")
    (ws.subset_path("top")).unlink()
    names = ["clip30", "dedup"]
    assert distinct_hues(names)
    filter_subsets(ws, [(n, f) for n, f in zip(names, (30, 60), strict=True)])
    page = render(ws)
    capsys.readouterr()
    assert '<figure class="multiples"' not in page and page.count('<svg class="chart"') == 1
    for name in names:
        assert f'<polyline fill="none" stroke="{subset_colour(name)}"' in page
