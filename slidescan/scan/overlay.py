"""Render the heatmap over the slide thumbnail as a PNG for a human to look at.

Coordinates: the thumbnail is drawn with pixel *edges* as coordinates, so thumbnail pixel
(row r, col c) covers x in [c, c+1), y in [r, r+1), and the whole thumbnail spans
x in [0, W], y in [0, H] with y growing downwards. ``thumbnail_extent`` places the heatmap grid
in those coordinates, in matplotlib ``imshow(extent=...)`` order ``(x0, x1, y1, y0)``: left,
right, bottom (the larger y), top. Because the grid covers only whole patches from the slide
origin, it usually stops short of the thumbnail's right and bottom edges; see
:func:`grid_extent_in_thumbnail`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slidescan.about import RESEARCH_USE_NOTICE

Extent = tuple[float, float, float, float]


def grid_extent_in_thumbnail(
    grid_shape: tuple[int, int],
    cell_px: float,
    thumbnail_downsample: float,
    origin: tuple[float, float] = (0.0, 0.0),
) -> Extent:
    """Extent ``(x0, x1, y1, y0)`` of a (rows, cols) grid of ``cell_px``-pixel cells.

    ``cell_px`` is the cell size in level-0 slide pixels, ``origin`` the level-0 top-left of cell
    (0, 0)'s area and ``thumbnail_downsample`` the level-0 pixels per thumbnail pixel.
    """
    rows, cols = grid_shape
    scale = cell_px / thumbnail_downsample
    x0, y0 = origin[0] / thumbnail_downsample, origin[1] / thumbnail_downsample
    return (x0, x0 + cols * scale, y0 + rows * scale, y0)


def render_overlay(
    thumbnail: np.ndarray,
    probability: np.ndarray,
    out_png: Path,
    *,
    title: str = "",
    threshold: float | None = None,
    thumbnail_extent: Extent | None = None,
) -> Path:
    """Draw ``probability`` (rows, cols; NaN = no tissue, transparent) over ``thumbnail``.

    ``thumbnail`` is (H, W) grey or (H, W, 3|4) RGB(A). ``thumbnail_extent`` is where the grid
    lies in thumbnail pixel coordinates, ``(x0, x1, y1, y0)`` as in the module docstring;
    ``None`` stretches the grid over the whole thumbnail. With ``threshold`` a contour marks
    cells at that probability. The PNG carries a colour bar, the title and the research-use
    notice. Returns ``out_png``.
    """
    # Imported here so the scanner does not pay for matplotlib unless it draws; the Figure +
    # Agg canvas API avoids pyplot's global state and never needs a display.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    thumb = np.asarray(thumbnail)
    grid = np.asarray(probability, dtype=np.float32)
    if thumb.ndim not in (2, 3) or (thumb.ndim == 3 and thumb.shape[2] not in (3, 4)):
        raise ValueError(f"thumbnail must be (H, W), (H, W, 3) or (H, W, 4), got {thumb.shape}")
    if grid.ndim != 2:
        raise ValueError(f"probability must be a 2-D (rows, cols) grid, got shape {grid.shape}")
    height, width = thumb.shape[:2]
    extent = _check_extent(thumbnail_extent) if thumbnail_extent else (0.0, width, height, 0.0)

    # Size the figure around the image so wide and tall thumbnails both fill it; inches.
    image_width = 6.4
    image_height = min(max(image_width * height / width, 2.0), 10.0)
    top, bottom, left, right = 0.45, 0.4, 0.2, 1.4  # title, footer, margin, colour bar
    fig_width, fig_height = left + image_width + right, bottom + image_height + top
    fig = Figure(figsize=(fig_width, fig_height), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes(
        (left / fig_width, bottom / fig_height, image_width / fig_width, image_height / fig_height)
    )
    ax.imshow(thumb, extent=(0, width, height, 0), cmap="gray" if thumb.ndim == 2 else None)

    cmap = colormaps["inferno"].with_extremes(bad=(0, 0, 0, 0))
    shown = ax.imshow(
        np.ma.masked_invalid(grid),
        extent=extent,
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        alpha=0.5,
        interpolation="nearest",
    )
    if threshold is not None and _contour_possible(grid, threshold):
        x0, x1, y1, y0 = extent
        rows, cols = grid.shape
        # Contour points sit at cell centres, so the line runs midway between cells.
        xs = x0 + (np.arange(cols) + 0.5) * (x1 - x0) / cols
        ys = y0 + (np.arange(rows) + 0.5) * (y1 - y0) / rows
        ax.contour(xs, ys, np.ma.masked_invalid(grid), levels=[threshold], colors="cyan")
        ax.legend(
            handles=[Line2D([], [], color="cyan", label=f"p = {threshold:g}")],
            loc="upper right",
            fontsize="small",
        )
    # Keep the whole thumbnail in view even if the extent reaches past it.
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()

    bar_height = 0.8 * image_height
    cax = fig.add_axes(
        (
            (left + image_width + 0.25) / fig_width,
            (bottom + 0.1 * image_height) / fig_height,
            0.2 / fig_width,
            bar_height / fig_height,
        )
    )
    colorbar = fig.colorbar(shown, cax=cax)
    colorbar.set_label("tumour probability")
    if colorbar.solids is not None:
        colorbar.solids.set_alpha(1.0)  # the bar shows the scale, not the blend
    if title:
        fig.suptitle(title, y=1 - 0.08 / fig_height, va="top", fontsize="medium")
    fig.text(0.5, 0.1 / fig_height, RESEARCH_USE_NOTICE, ha="center", va="bottom", fontsize="small")

    out_png = Path(out_png)
    fig.savefig(out_png, format="png")
    return out_png


def _check_extent(extent: Extent) -> Extent:
    x0, x1, y1, y0 = (float(v) for v in extent)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(
            f"thumbnail_extent must be (x0, x1, y1, y0) with x1 > x0, y1 > y0: {extent}"
        )
    return (x0, x1, y1, y0)


def _contour_possible(grid: np.ndarray, threshold: float) -> bool:
    """Whether a contour at ``threshold`` has a line to draw (else matplotlib warns)."""
    if min(grid.shape) < 2:
        return False
    finite = grid[np.isfinite(grid)]
    return finite.size > 0 and finite.min() < threshold <= finite.max()
