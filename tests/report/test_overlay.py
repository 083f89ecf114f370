"""The overlay PNG: outlines along cell edges, a legend that names them, both thresholds on the
colour bar, negative tissue left visible and titles inside the figure; also the grid-extent helper.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from slidescan.report.overlay import (
    cell_outlines,
    draw_overlay,
    grid_extent_in_thumbnail,
    render_overlay,
)
from slidescan.scan.slide_call import label_lesions

SEED, EXTENT = 0.98, 0.74
# An 8×10 grid of 15-pixel cells whose top-left lies at thumbnail pixel (5, 10).
ROWS, COLS = 8, 10
GRID_EXTENT = grid_extent_in_thumbnail((ROWS, COLS), 96, 6.4, origin=(32.0, 64.0))
PINK = (200, 120, 190)


def _thumbnail(height: int = 150, width: int = 200) -> np.ndarray:
    thumb = np.full((height, width, 3), 240, dtype=np.uint8)
    thumb[10:130, 5:155] = PINK  # the "tissue", under the whole grid
    return thumb


def _heatmap(background: float = 0.05) -> np.ndarray:
    """Tissue everywhere but a 2×2 hole and the last column; a 3×4 block at 0.99."""
    grid = np.full((ROWS, COLS), background, dtype=np.float32)
    grid[:, -1] = np.nan
    grid[5:7, 1:3] = np.nan
    grid[1:4, 4:8] = 0.99
    return grid


def _draw(probability: np.ndarray, **kwargs: Any) -> Figure:
    labels, lesions = label_lesions(
        probability, seed_threshold=SEED, extent_threshold=EXTENT, cell_mm=0.5
    )
    options: dict[str, Any] = {
        "thumbnail_extent": GRID_EXTENT, "lesion_labels": labels, "lesions": lesions,
        "seed_threshold": SEED, "extent_threshold": EXTENT, "title": "slide_001",
    }  # fmt: skip
    options.update(kwargs)
    return draw_overlay(options.pop("thumbnail", _thumbnail()), probability, **options)


def _axes(fig: Figure, label: str) -> Axes:
    (ax,) = [ax for ax in fig.axes if ax.get_label() == label]
    return ax


def _outline(fig: Figure, gid: str) -> list[np.ndarray]:
    (lines,) = [c for c in _axes(fig, "overlay").collections if c.get_gid() == gid]
    assert isinstance(lines, LineCollection)
    return [np.asarray(ring) for ring in lines.get_segments()]


def _in_cells(ring: np.ndarray) -> np.ndarray:
    """Thumbnail x, y back to grid (col, row) edge coordinates."""
    x0, x1, y1, y0 = GRID_EXTENT
    return (ring - (x0, y0)) / ((x1 - x0) / COLS, (y1 - y0) / ROWS)


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def test_lesion_outline_is_closed_and_follows_cell_edges() -> None:
    (ring,) = _outline(_draw(_heatmap()), "lesion outline")
    cells = _in_cells(ring)
    np.testing.assert_allclose(cells[0], cells[-1])  # closed
    np.testing.assert_allclose(cells, np.round(cells), atol=1e-9)  # every vertex on a cell corner
    # Consecutive vertices differ along one axis only: the path runs along cell edges.
    steps = np.diff(np.round(cells), axis=0)
    assert np.all((steps[:, 0] == 0) | (steps[:, 1] == 0))
    assert _area(cells) == pytest.approx(12.0)  # the 3×4 block's cells, whole
    assert cells.min(axis=0).tolist() == [4.0, 1.0] and cells.max(axis=0).tolist() == [8.0, 4.0]


def test_tissue_outline_keeps_holes_and_uses_the_given_mask() -> None:
    rings = [_in_cells(ring) for ring in _outline(_draw(_heatmap()), "tissue outline")]
    assert len(rings) == 2  # the outer boundary and the hole
    assert sorted(_area(ring) for ring in rings) == pytest.approx([4.0, 72.0])
    tissue = np.zeros((ROWS, COLS), dtype=bool)
    tissue[0:2, 0:3] = True
    (ring,) = _outline(_draw(_heatmap(), tissue=tissue), "tissue outline")
    assert _area(_in_cells(ring)) == pytest.approx(6.0)


def test_cell_outlines_of_corner_touching_cells_and_empty_masks() -> None:
    mask = np.array([[True, False], [False, True]])
    rings = cell_outlines(mask, (0.0, 20.0, 20.0, 0.0))
    assert sorted(_area(ring) for ring in rings) == [100.0, 100.0]
    assert all(np.array_equal(ring[0], ring[-1]) for ring in rings)
    assert cell_outlines(np.zeros((3, 3), dtype=bool), (0.0, 3.0, 3.0, 0.0)) == []


def test_colour_bar_marks_both_thresholds() -> None:
    cax = _axes(_draw(_heatmap()), "colour bar")
    names = {t.get_text() for t in cax.texts if t.get_gid() == "threshold"}
    assert names == {f"seed {SEED:g}", f"extent {EXTENT:g}"}
    marked = {
        float(line.get_ydata()[0])  # type: ignore[index]
        for line in cax.lines
        if line.get_gid() == "threshold"
    }
    assert marked == {SEED, EXTENT}
    # The ordinary ticks give way to the threshold names instead of printing over them.
    assert all(abs(tick - t) >= 0.05 for tick in cax.get_yticks() for t in (SEED, EXTENT))


@pytest.mark.parametrize(("seed", "extent"), [(0.95, 0.93), (1.0, 0.99), (0.5, 0.5)])
@pytest.mark.parametrize("height", [150, 20])  # a short image has a short colour bar
def test_threshold_names_never_overlap(seed: float, extent: float, height: int) -> None:
    fig = _draw(
        _heatmap(), seed_threshold=seed, extent_threshold=extent, thumbnail=_thumbnail(height)
    )
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    cax = _axes(fig, "colour bar")
    boxes = [t.get_window_extent(renderer) for t in cax.texts if t.get_gid() == "threshold"]
    assert len(boxes) == (1 if seed == extent else 2)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    figure_box = fig.bbox
    assert all(figure_box.x0 <= b.x0 and b.x1 <= figure_box.x1 for b in boxes)


def test_legend_names_each_line() -> None:
    fig = _draw(_heatmap())
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == [
        f"lesion outline (≥ extent threshold {EXTENT:g}, seeded ≥ {SEED:g})",
        "scanned tissue",
    ]
    # Each legend line has the colour of the outline it names.
    handles = dict(zip(texts, legend.legend_handles, strict=True))
    for text, gid in zip(texts, ("lesion outline", "tissue outline"), strict=True):
        (lines,) = [c for c in _axes(fig, "overlay").collections if c.get_gid() == gid]
        colour = to_rgba(handles[text].get_color())  # type: ignore[attr-defined]
        np.testing.assert_allclose(np.asarray(lines.get_edgecolor())[0], colour)
    negative = _draw(_heatmap(0.05).clip(max=0.5))
    assert negative.legends[0].get_texts()[0].get_text().endswith("none on this slide")


def test_largest_lesions_are_labelled_without_overlap() -> None:
    grid = np.full((ROWS, COLS), 0.1, dtype=np.float32)
    grid[1:4, 1:6] = 0.99  # the largest
    for col in (1, 3, 5, 7):  # four one-cell lesions side by side: their labels would collide
        grid[6, col] = 0.99
    fig = _draw(grid)
    labels = [t for t in _axes(fig, "overlay").texts if t.get_text()[:1].isdigit()]
    # Corner to corner of 5×3 cells of 0.5 mm: (√(4² + 2²) + 1) · 0.5 mm.
    assert labels[0].get_text() == "1: macrometastasis, 2.74 mm"
    assert 2 <= len(labels) <= 3
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def _png_pixels(fig: Figure, png: Path, x: slice, y: slice) -> np.ndarray:
    """The PNG's pixels over thumbnail pixels ``y``, ``x`` (same layout as ``fig``)."""
    ax = _axes(fig, "overlay")
    (left, top), (right, bottom) = ax.transData.transform([(x.start, y.start), (x.stop, y.stop)])
    height = fig.bbox.height
    with Image.open(png) as image:
        assert image.size == (round(fig.bbox.width), round(height))
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    rows = slice(round(height - top) + 2, round(height - bottom) - 2)
    return pixels[rows, round(left) + 2 : round(right) - 2]


def test_negative_tissue_stays_visible_and_positive_tissue_stands_out(tmp_path: Path) -> None:
    grid = _heatmap()
    labels, lesions = label_lesions(grid, seed_threshold=SEED, extent_threshold=EXTENT, cell_mm=0.5)
    options: dict[str, Any] = {
        "thumbnail_extent": GRID_EXTENT, "lesion_labels": labels, "lesions": lesions,
        "seed_threshold": SEED, "extent_threshold": EXTENT,
    }  # fmt: skip
    png = render_overlay(_thumbnail(), grid, tmp_path / "o.png", **options)
    fig = draw_overlay(_thumbnail(), grid, **options)
    # Cells (row 6, cols 4-7) at p = 0.05: the slide's own pink, all but unchanged.
    negative = _png_pixels(fig, png, slice(5 + 4 * 15, 5 + 8 * 15), slice(10 + 6 * 15, 10 + 7 * 15))
    assert np.abs(negative - PINK).max() <= 10
    # Inside the p = 0.99 block (rows 1-3, cols 4-7) the colour clearly differs.
    positive = _png_pixels(fig, png, slice(5 + 5 * 15, 5 + 7 * 15), slice(10 + 2 * 15, 10 + 3 * 15))
    assert np.abs(positive.mean(axis=(0, 1)) - PINK).max() >= 60


def test_long_titles_wrap_inside_the_figure(tmp_path: Path) -> None:
    title = (
        "slide_"
        + "0123456789" * 25
        + ".svs\nPOSITIVE (macrometastasis, 2.31 mm) — "
        + ("UNRELIABLE: slide unlike the training data " * 3)
    )
    fig = _draw(_heatmap(), title=title)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    (text,) = [t for t in fig.texts if t.get_text().startswith("slide_")]
    box = text.get_window_extent(renderer)
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert box.y0 >= _axes(fig, "overlay").get_window_extent(renderer).y1  # above the image
    png = render_overlay(_thumbnail(), _heatmap(), tmp_path / "t.png", title=title)
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"))
    # Nothing is cut at the left or right edge (a clipped title leaves glyphs there).
    assert pixels[:, :2].min() >= 250 and pixels[:, -2:].min() >= 250


def test_overlay_writes_png_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    labels, lesions = label_lesions(
        _heatmap(), seed_threshold=SEED, extent_threshold=EXTENT, cell_mm=0.5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a missing glyph (≥) or an empty collection
        result = render_overlay(
            _thumbnail(), _heatmap(), out, title="slide_001", thumbnail_extent=GRID_EXTENT,
            lesion_labels=labels, lesions=lesions, seed_threshold=SEED, extent_threshold=EXTENT,
        )  # fmt: skip
    assert result == out
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert 600 <= image.width <= 2000 and 400 <= image.height <= 2000


@pytest.mark.parametrize("thresholds", [None, (0.95, 0.9), (0.05, 0.01)])
def test_overlay_defaults_and_degenerate_grids(
    tmp_path: Path, thresholds: tuple[float, float] | None
) -> None:
    grey = np.linspace(0, 1, 50 * 80).reshape(50, 80)
    for name, grid in {"nan": np.full((3, 4), np.nan), "one": np.array([[0.5]])}.items():
        extra: dict[str, Any] = {}
        if thresholds is not None:
            labels, lesions = label_lesions(
                grid, seed_threshold=thresholds[0], extent_threshold=thresholds[1], cell_mm=0.5
            )
            extra = {
                "lesion_labels": labels, "lesions": lesions,
                "seed_threshold": thresholds[0], "extent_threshold": thresholds[1],
            }  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = render_overlay(grey, grid, tmp_path / f"{name}.png", **extra)
        with Image.open(out) as image:
            assert image.format == "PNG"


def test_grid_extent_and_bad_arguments(tmp_path: Path) -> None:
    assert grid_extent_in_thumbnail((10, 20), 96, 32) == (0.0, 60.0, 30.0, 0.0)
    with pytest.raises(ValueError, match="thumbnail_extent"):
        render_overlay(_thumbnail(), _heatmap(), tmp_path / "x.png", thumbnail_extent=(0, 10, 0, 5))
    with pytest.raises(ValueError, match="tissue"):
        render_overlay(_thumbnail(), _heatmap(), tmp_path / "x.png", tissue=np.ones((2, 2), bool))


def test_cell_outlines_drop_holes_below_the_minimum() -> None:
    mask = np.ones((9, 9), dtype=bool)
    mask[2, 2] = False  # a one-cell hole
    mask[4:7, 4:7] = False  # a 3×3 hole
    extent = (0.0, 9.0, 9.0, 0.0)
    assert sorted(_area(r) for r in cell_outlines(mask, extent)) == [1.0, 9.0, 81.0]
    assert sorted(_area(r) for r in cell_outlines(mask, extent, min_hole_cells=9)) == [9.0, 81.0]
