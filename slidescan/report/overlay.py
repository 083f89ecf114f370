"""Render the heatmap over the slide thumbnail as a PNG for a human to look at.

Coordinates: the thumbnail is drawn with pixel *edges* as coordinates, so thumbnail pixel
(row r, col c) covers x in [c, c+1), y in [r, r+1), and the whole thumbnail spans
x in [0, W], y in [0, H] with y growing downwards. ``thumbnail_extent`` places the heatmap grid
in those coordinates, in matplotlib ``imshow(extent=...)`` order ``(x0, x1, y1, y0)``: left,
right, bottom (the larger y), top. Because the grid covers only whole patches from the slide
origin, it usually stops short of the thumbnail's right and bottom edges; see
:func:`grid_extent_in_thumbnail`.

What the picture shows: the probability as colour whose opacity grows with it (so negative
tissue keeps the slide's own colours), the scanned tissue's outline, each lesion's outline
along the edges of its grid cells (the area each cell stands for), the largest lesions' category
and diameter, and a colour bar with the seed and extent thresholds marked on it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from slidescan.about import RESEARCH_USE_NOTICE
from slidescan.report.lesion_geojson import cell_polygons
from slidescan.report.slide_report import Lesion
from slidescan.vocabulary import CATEGORY_NAMES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from matplotlib.patheffects import AbstractPathEffect
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

Extent = tuple[float, float, float, float]

LESION_COLOUR = "#00e5ff"  # cyan: apart from H&E pinks and the map's reds and yellows
TISSUE_COLOUR = "#1f4e9c"
MAX_ALPHA = 0.85  # at probability 1 the slide still shows a little through the colour
ALPHA_POWER = 1.5  # opacity p**1.5: p = 0.1 adds 3 % colour, p = 0.5 adds 30 %
LABELLED_LESIONS = 3  # more labels than this crowd the picture; the JSON lists them all
DPI = 120


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
    thumbnail: np.ndarray, probability: np.ndarray, out_png: Path, **options: Any
) -> Path:
    """Draw the overlay (:func:`draw_overlay`, whose keywords ``options`` are) and write it to
    ``out_png``; returns it."""
    fig = draw_overlay(thumbnail, probability, **options)
    out_png = Path(out_png)
    fig.savefig(out_png, format="png", dpi=DPI)
    return out_png


def draw_overlay(
    thumbnail: np.ndarray,
    probability: np.ndarray,
    *,
    title: str = "",
    thumbnail_extent: Extent | None = None,
    tissue: np.ndarray | None = None,
    lesion_labels: np.ndarray | None = None,
    lesions: Sequence[Lesion] = (),
    seed_threshold: float | None = None,
    extent_threshold: float | None = None,
    um_per_px: float | None = None,
) -> Figure:
    """The overlay figure: ``probability`` (rows, cols; NaN = not scanned) over ``thumbnail``.

    ``thumbnail`` is (H, W) grey or (H, W, 3|4) RGB(A). ``thumbnail_extent`` is where the grid
    lies in thumbnail pixel coordinates, ``(x0, x1, y1, y0)`` as in the module docstring;
    ``None`` stretches the grid over the whole thumbnail. ``tissue`` (default: the finite cells)
    is outlined as the scanned tissue. ``lesion_labels`` (from
    :func:`~slidescan.scan.slide_call.label_lesions`: ``i + 1`` on ``lesions[i]``'s cells)
    are outlined, and the largest few labelled with category and diameter. The
    thresholds are marked on the colour bar and named in the legend. Title lines wrap to fit.
    ``um_per_px`` (µm per thumbnail pixel) adds a scale bar.
    """
    # Imported here so the scanner does not pay for matplotlib unless it draws; the Figure +
    # Agg canvas API avoids pyplot's global state and never needs a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    thumb = np.asarray(thumbnail)
    grid = np.asarray(probability, dtype=np.float32)
    if thumb.ndim not in (2, 3) or (thumb.ndim == 3 and thumb.shape[2] not in (3, 4)):
        raise ValueError(f"thumbnail must be (H, W), (H, W, 3) or (H, W, 4), got {thumb.shape}")
    if grid.ndim != 2:
        raise ValueError(f"probability must be a 2-D (rows, cols) grid, got shape {grid.shape}")
    scanned = np.isfinite(grid) if tissue is None else np.asarray(tissue, dtype=bool)
    labels = None if lesion_labels is None else np.asarray(lesion_labels)
    for name, array in (("tissue", scanned), ("lesion_labels", labels)):
        if array is not None and array.shape != grid.shape:
            raise ValueError(f"{name} must have the grid's shape {grid.shape}, got {array.shape}")
    height, width = thumb.shape[:2]
    extent = _check_extent(thumbnail_extent) if thumbnail_extent else (0.0, width, height, 0.0)

    legend = [Line2D([], [], color=TISSUE_COLOUR, lw=1.2, label="scanned tissue")]
    if labels is not None:
        name = _lesion_legend(len(lesions), seed_threshold, extent_threshold)
        lesion_line = Line2D([], [], color=LESION_COLOUR, lw=2.0, path_effects=_halo(), label=name)
        legend.insert(0, lesion_line)

    # Layout in inches: title, image and colour bar, legend, notice; the figure is sized around
    # the image so wide and tall thumbnails both fill it.
    image_width = 6.4
    image_height = min(max(image_width * height / width, 2.0), 10.0)
    left, bar_space = 0.2, 2.2
    fig_width = left + image_width + bar_space
    fig = Figure(figsize=(fig_width, 4.0), dpi=DPI)
    FigureCanvasAgg(fig)
    title_text, title_height = _wrapped_title(fig, title) if title else (None, 0.1)
    legend_height = 0.1 + 0.2 * len(legend)
    notice_height = 0.3
    bottom = notice_height + legend_height
    fig_height = bottom + image_height + title_height + 0.1
    fig.set_size_inches(fig_width, fig_height)
    if title_text is not None:
        title_text.set_y(1 - 0.08 / fig_height)

    ax = fig.add_axes(
        (left / fig_width, bottom / fig_height, image_width / fig_width, image_height / fig_height),
        label="overlay",
    )
    ax.imshow(thumb, extent=(0, width, height, 0), cmap="gray" if thumb.ndim == 2 else None)
    shown = ax.imshow(
        np.ma.masked_invalid(grid),
        extent=extent,
        cmap=_probability_colours(),
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    _draw_outlines(ax, scanned, extent, TISSUE_COLOUR, 1.2, gid="tissue outline")
    if labels is not None:
        # Single normal-looking tiles inside a lesion would draw a mesh of tiny rings: the
        # outline keeps only holes of 9 cells or more (the GeoJSON keeps them all).
        _draw_outlines(
            ax, labels > 0, extent, LESION_COLOUR, 2.0, gid="lesion outline", halo=True,
            min_hole_cells=9,
        )  # fmt: skip
    # Keep the whole thumbnail in view even if the extent reaches past it, with a margin so
    # that outlines along the thumbnail's edges stay visible. Set before the lesion labels:
    # their overlap test measures them where they will be drawn.
    pad = 0.01 * max(width, height)
    ax.set_xlim(-pad, width + pad)
    ax.set_ylim(height + pad, -pad)
    ax.set_axis_off()
    if labels is not None:
        _label_lesions(ax, labels, lesions, extent)
    if um_per_px:
        _scale_bar(ax, width, um_per_px)

    bar_height = 0.8 * image_height
    cax = fig.add_axes(
        (
            (left + image_width + 0.55) / fig_width,
            (bottom + 0.1 * image_height) / fig_height,
            0.2 / fig_width,
            bar_height / fig_height,
        ),
        label="colour bar",
    )
    colorbar = fig.colorbar(shown, cax=cax)
    # The bar shows each colour as it looks over white glass: faint where the map is faint.
    cax.yaxis.set_label_position("left")
    colorbar.set_label("tumour probability", labelpad=4)
    # One small label is about 0.17 inch tall: that much of the bar, in probability.
    _mark_thresholds(cax, seed_threshold, extent_threshold, gap=0.17 / bar_height)

    fig.legend(
        handles=legend,
        loc="upper left",
        bbox_to_anchor=(left / fig_width, (bottom - 0.05) / fig_height),
        frameon=False,
        fontsize="small",
        handlelength=2.5,
    )
    fig.text(0.5, 0.1 / fig_height, RESEARCH_USE_NOTICE, ha="center", va="bottom", fontsize="small")
    return fig


def cell_outlines(mask: np.ndarray, extent: Extent, min_hole_cells: int = 0) -> list[np.ndarray]:
    """Closed rings (k, 2) of x, y along the cell edges around ``mask``'s True cells.

    The grid fills ``extent`` ``(x0, x1, y1, y0)``; outer boundaries and holes of at least
    ``min_hole_cells`` cells come back, each ring's last vertex equal to its first.
    """
    grid = np.asarray(mask, dtype=bool)
    if not grid.any():
        return []
    rows, cols = grid.shape
    x0, x1, y1, y0 = extent
    scale = np.array([(x1 - x0) / cols, (y1 - y0) / rows])
    (shape,) = cell_polygons(grid.astype(np.int32), 1, (0.0, 0.0), 1.0)
    parts = shape.geoms if shape.geom_type == "MultiPolygon" else [shape]
    rings = []
    for part in parts:
        holes = [h for h in part.interiors if shapely.Polygon(h).area >= min_hole_cells]
        for ring in (part.exterior, *holes):
            rings.append(np.asarray(ring.coords) * scale + (x0, y0))
    return rings


def _probability_colours() -> Colormap:
    """Inferno's warm half, ever more opaque with probability; NaN fully transparent."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    steps = np.linspace(0.0, 1.0, 256)
    colours = colormaps["inferno"](0.35 + 0.6 * steps)  # dark purples vanish into H&E
    colours[:, 3] = MAX_ALPHA * steps**ALPHA_POWER
    return ListedColormap(colours, name="slidescan_probability").with_extremes(bad=(0, 0, 0, 0))


def _halo() -> list[AbstractPathEffect]:
    """A dark edge under a line so it shows on pale glass and on bright colour alike."""
    from matplotlib import patheffects

    return [patheffects.Stroke(linewidth=3.5, foreground="black", alpha=0.6), patheffects.Normal()]


def _draw_outlines(
    ax: Axes,
    mask: np.ndarray,
    extent: Extent,
    colour: str,
    width: float,
    *,
    gid: str,
    halo: bool = False,
    min_hole_cells: int = 0,
) -> None:
    """``mask``'s cell-edge outline as one collection, named ``gid`` so it can be found."""
    from matplotlib.collections import LineCollection

    rings = cell_outlines(mask, extent, min_hole_cells)
    if rings:
        lines = LineCollection(rings, colors=colour, linewidths=width, zorder=4 if halo else 3)
        lines.set_gid(gid)
        if halo:
            lines.set_path_effects(_halo())
        ax.add_collection(lines)


def _label_lesions(ax: Axes, labels: np.ndarray, lesions: Sequence[Lesion], extent: Extent) -> None:
    """Category and diameter above the largest lesions, dropping any label that would cover
    another."""
    x0, x1, y1, y0 = extent
    rows, cols = labels.shape
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    placed: list[Bbox] = []
    for rank, lesion in enumerate(lesions[:LABELLED_LESIONS], start=1):
        where = np.nonzero(labels == rank)
        if not where[0].size:
            continue
        # Above the lesion's top edge, at its middle: the outline itself stays clear.
        x = x0 + (where[1].min() + where[1].max() + 1) / 2 * (x1 - x0) / cols
        y = y0 + where[0].min() * (y1 - y0) / rows
        text = ax.annotate(
            f"{rank}: {CATEGORY_NAMES[lesion.category]}, {lesion.diameter_mm:.2f} mm",
            (x, y),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="small",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": LESION_COLOUR, "alpha": 0.85},
            zorder=5,
        )
        box = text.get_window_extent(renderer)
        if any(box.overlaps(other) for other in placed):
            text.remove()
        else:
            placed.append(box)


def _lesion_legend(count: int, seed: float | None, extent: float | None) -> str:
    rule = []
    if extent is not None:
        rule.append(f"≥ extent threshold {extent:.3g}")
    if seed is not None:
        rule.append(f"seeded ≥ {seed:.3g}")
    text = "lesion outline" + (f" ({', '.join(rule)})" if rule else "")
    return text + (": none on this slide" if count == 0 else "")


def _mark_thresholds(cax: Axes, seed: float | None, extent: float | None, *, gap: float) -> None:
    """Lines across the colour bar at each threshold, named on its right; ordinary ticks that
    would collide with those names are dropped."""
    from matplotlib.transforms import blended_transform_factory

    marks = {}
    if extent is not None:
        marks[float(extent)] = "extent"
    if seed is not None:
        marks[float(seed)] = "seed" if float(seed) not in marks else "seed = extent"
    ticks = [t for t in np.linspace(0, 1, 6) if all(abs(t - m) >= gap for m in marks)]
    cax.set_yticks(ticks)
    cax.set_yticklabels([f"{t:.1f}" for t in ticks])
    # Spread the names apart when thresholds lie close together, keeping them on the bar.
    placed: list[float] = []
    for value in sorted(marks):
        placed.append(max(value, placed[-1] + gap) if placed else value)
    overshoot = max(0.0, placed[-1] - 1.0) if placed else 0.0
    placed = [max(p - overshoot, 0.0) for p in placed]
    # x in bar widths, y in probability.
    side = blended_transform_factory(cax.transAxes, cax.transData)
    for value, at in zip(sorted(marks), placed, strict=True):
        cax.axhline(value, color=LESION_COLOUR, lw=1.2, path_effects=_halo(), gid="threshold")
        cax.plot([1.0, 1.25, 1.5], [value, value, at], color="black", lw=0.8, transform=side,
                 clip_on=False)  # fmt: skip
        cax.text(
            1.6, at, f"{marks[value]} {value:.3g}", transform=side, va="center", ha="left",
            fontsize="small", gid="threshold",
        )  # fmt: skip


SCALE_BAR_UM = (50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000)


def _scale_bar(ax: Any, width_px: int, um_per_px: float) -> None:
    """A scale bar in the lower left: the longest round length up to a fifth of the image."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    fitting = [um for um in SCALE_BAR_UM if um / um_per_px <= width_px / 5] or [SCALE_BAR_UM[0]]
    um = fitting[-1]
    label = f"{um // 1000} mm" if um >= 1000 else f"{um} µm"
    bar = AnchoredSizeBar(
        ax.transData, um / um_per_px, label, "lower left", pad=0.4, borderpad=0.6, sep=3,
        frameon=True, size_vertical=max(1.0, width_px / 300), fontproperties={"size": "small"},
    )  # fmt: skip
    bar.patch.set_alpha(0.8)
    bar.set_gid("scale bar")
    ax.add_artist(bar)


def _wrapped_title(fig: Figure, title: str) -> tuple[Text, float]:
    """Add ``title`` at the top, wrapped to the figure's width; it and its height in inches."""
    fig_width_px = fig.get_figwidth() * fig.dpi
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    text = fig.text(0.5, 1.0, title, ha="center", va="top", fontsize="medium", wrap=False)
    chars = max(len(line) for line in title.splitlines()) if title.strip() else 1
    while True:
        text.set_text(
            "\n".join(
                "\n".join(textwrap.wrap(paragraph, chars) or [""])
                for paragraph in title.splitlines()
            )
        )
        box = text.get_window_extent(renderer)
        if box.width <= 0.96 * fig_width_px or chars <= 8:
            return text, box.height / fig.dpi + 0.15
        chars = max(8, int(chars * min(0.95, 0.96 * fig_width_px / box.width)))


def _check_extent(extent: Extent) -> Extent:
    x0, x1, y1, y0 = (float(v) for v in extent)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(
            f"thumbnail_extent must be (x0, x1, y1, y0) with x1 > x0, y1 > y0: {extent}"
        )
    return (x0, x1, y1, y0)
