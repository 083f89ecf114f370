"""Where a scan's cells lie on the slide: the tissue mask, the tile grid at the model's
resolution, and the slide facts the outputs record, in one typed record.

Everything downstream (heatmap writer, GeoJSON, overlay, report) reads :class:`SlideGeometry`'s
fields; the zarr and JSON attributes are derived from it by :meth:`SlideGeometry.to_attrs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from slidescan.engine.weights import ModelCard
from slidescan.errors import SlidescanError
from slidescan.io.slide import Slide
from slidescan.scan.tiling import TileGrid, make_grid, tissue_fraction
from slidescan.scan.tissue import mask_size_limits, tissue_mask

# A model patch must span at least this many slide pixels: below it, the scale is almost surely
# wrong (--mpp 50 for 0.50) and the grid explodes (2.7 million tiles on a 4,443-px slide).
MIN_PATCH_SLIDE_PX = 24


def mask_thumbnail(slide: Slide, max_size: int = 2048) -> tuple[np.ndarray, float]:
    """Tissue mask of the slide's thumbnail and its downsample (level-0 px per mask px).

    The thumbnail is at most ``max_size`` px, but no larger than the first pyramid level that is
    at least half that size: reading that level whole is far cheaper than shrinking a level
    several times bigger, and half the resolution is plenty for a mask.
    """
    enough = [max(d) for d in slide.level_dimensions if max(d) >= max_size // 2]
    rgb, downsample = slide.thumbnail(min([max_size, *enough]))
    min_object_px, max_hole_px = mask_size_limits(slide.mpp * downsample)
    mask = tissue_mask(rgb, min_object_px=min_object_px, max_hole_px=max_hole_px)
    return mask, downsample


def check_grid_scale(slide: Slide, card: ModelCard) -> None:
    """Refuse, before any scanning, a scale at which a model patch covers a few slide pixels."""
    span = card.input_size * card.mpp / slide.mpp
    if span < MIN_PATCH_SLIDE_PX:
        raise SlidescanError(
            f"{slide.path.name}: at {slide.mpp:.3g} µm/px ({slide.mpp_source}) a "
            f"{card.input_size}-px patch at {card.mpp} µm/px covers only {span:.1f} slide pixels; "
            "the scale is probably wrong (check the µm/px given or the slide's metadata), or "
            "allow it with any_scale",
            param="any_scale",
        )


def plan_grid(
    slide: Slide, card: ModelCard, stride: int | None, min_tissue: float
) -> tuple[TileGrid, np.ndarray]:
    """The tile grid at the model's resolution and which of its cells hold enough tissue."""
    mask, mask_ds = mask_thumbnail(slide)
    grid = make_grid(slide.dimensions, slide.mpp, card.mpp, card.input_size, stride)
    if grid.shape[0] < 1 or grid.shape[1] < 1:
        raise SlidescanError(
            f"{slide.path.name}: slide is smaller than one {card.input_size}-px patch "
            f"at {card.mpp} µm/px"
        )
    return grid, tissue_fraction(mask, mask_ds, grid) >= min_tissue


@dataclass(frozen=True)
class SlideGeometry:
    """The slide as the scan saw it, and its grid. A cell shows the central stride×stride square
    of its patch: cell (r, c) covers ``cell_origin_level0 + (c, r) · cell_level0_px``."""

    slide_dimensions: tuple[int, int]
    bounds_origin: tuple[int, int]  # OpenSlide's non-empty region: QuPath's image starts there
    slide_mpp: float
    mpp_source: str
    reader: str
    level: int  # the pyramid level read for the model's µm/px
    downsample: float
    grid: TileGrid

    @classmethod
    def of(cls, slide: Slide, grid: TileGrid) -> SlideGeometry:
        """The geometry of ``grid`` on the open ``slide``."""
        level = slide.best_level_for_mpp(grid.target_mpp)
        return cls(
            slide_dimensions=(int(slide.dimensions[0]), int(slide.dimensions[1])),
            bounds_origin=(int(slide.bounds_origin[0]), int(slide.bounds_origin[1])),
            slide_mpp=float(slide.mpp), mpp_source=slide.mpp_source, reader=slide.reader,
            level=level, downsample=float(slide.level_downsamples[level]), grid=grid,
        )  # fmt: skip

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> SlideGeometry:
        """The geometry a heatmap's attributes record (the inverse of :meth:`to_attrs`)."""
        return cls(
            slide_dimensions=(int(attrs["slide_dimensions"][0]), int(attrs["slide_dimensions"][1])),
            bounds_origin=(
                int(attrs["slide_bounds_origin_level0"][0]),
                int(attrs["slide_bounds_origin_level0"][1]),
            ),
            slide_mpp=float(attrs["slide_mpp"]), mpp_source=str(attrs["slide_mpp_source"]),
            reader=str(attrs["slide_reader"]), level=int(attrs["level"]),
            downsample=float(attrs["downsample"]), grid=TileGrid.from_attrs(attrs["grid"]),
        )  # fmt: skip

    @property
    def cell_origin_level0(self) -> tuple[float, float]:
        """Level-0 top-left of the area cell (0, 0) stands for."""
        x, y = self.grid.cell_region_level0(0, 0)[:2]
        return float(x), float(y)

    @property
    def cell_level0_px(self) -> float:
        """A cell's side in level-0 pixels."""
        return self.grid.stride * self.grid.scale

    def to_attrs(self) -> dict[str, Any]:
        """The geometry keys of the heatmap's attributes and the report's ``attributes``."""
        grid = self.grid
        return {
            "slide_dimensions": list(self.slide_dimensions),
            "slide_bounds_origin_level0": list(self.bounds_origin),
            "slide_mpp": self.slide_mpp,
            "slide_mpp_source": self.mpp_source,
            "slide_reader": self.reader,
            "mpp": grid.target_mpp,
            "level": self.level,
            "downsample": self.downsample,
            "grid": grid.to_attrs(),
            "patch_size": grid.patch_size,
            "stride": grid.stride,
            "grid_origin_level0": list(grid.origin),
            "cell_origin_level0": list(self.cell_origin_level0),
            "cell_level0_px": self.cell_level0_px,
        }
