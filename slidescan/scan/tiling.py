"""The scan grid: which level-0 area each heatmap cell's patch comes from.

Cell ``(row, col)`` reads a ``patch_size`` patch (pixels at ``target_mpp``) whose top-left is
``origin + (col, row) * stride`` target pixels. The area a cell *represents* (what its heatmap
pixel shows, and what :func:`tissue_fraction` measures) is the central ``stride × stride``
square of its patch; with the default ``stride == patch_size`` that is the whole patch, and
cells tile the slide without gaps or overlap. Level-0 coordinates are ``(x, y)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of patches over a slide, in level-0 pixels and target-MPP pixels."""

    origin: tuple[int, int]  # level-0 (x, y) of cell (0, 0)'s patch top-left
    shape: tuple[int, int]  # (rows, cols)
    patch_size: int  # px at target_mpp
    stride: int  # px at target_mpp
    target_mpp: float
    slide_mpp: float

    @property
    def scale(self) -> float:
        """Level-0 pixels per target pixel."""
        return self.target_mpp / self.slide_mpp

    def cell_to_level0(self, row: int, col: int) -> tuple[int, int]:
        """Level-0 ``(x, y)`` of the cell's patch top-left, rounded to whole pixels."""
        x, y = self._cell_origin(row, col)
        return round(x), round(y)

    def cell_center_level0(self, row: int, col: int) -> tuple[float, float]:
        """Level-0 ``(x, y)`` of the cell's patch centre (unrounded)."""
        x, y = self._cell_origin(row, col)
        half = self.patch_size * self.scale / 2
        return x + half, y + half

    def cell_region_level0(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 ``(x0, y0, x1, y1)`` of the area the cell represents (central stride square)."""
        cx, cy = self.cell_center_level0(row, col)
        half = self.stride * self.scale / 2
        return cx - half, cy - half, cx + half, cy + half

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able description, the inverse of :meth:`from_attrs`."""
        return {
            "origin": [int(v) for v in self.origin],
            "shape": [int(v) for v in self.shape],
            "patch_size": int(self.patch_size),
            "stride": int(self.stride),
            "target_mpp": float(self.target_mpp),
            "slide_mpp": float(self.slide_mpp),
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TileGrid:
        """Rebuild a grid from :meth:`to_attrs` output (e.g. read back from a heatmap file)."""
        return cls(
            origin=(int(attrs["origin"][0]), int(attrs["origin"][1])),
            shape=(int(attrs["shape"][0]), int(attrs["shape"][1])),
            patch_size=int(attrs["patch_size"]),
            stride=int(attrs["stride"]),
            target_mpp=float(attrs["target_mpp"]),
            slide_mpp=float(attrs["slide_mpp"]),
        )

    def _cell_origin(self, row: int, col: int) -> tuple[float, float]:
        step = self.stride * self.scale
        return self.origin[0] + col * step, self.origin[1] + row * step


def make_grid(
    dimensions: tuple[int, int],
    slide_mpp: float,
    target_mpp: float,
    patch_size: int = 96,
    stride: int | None = None,
) -> TileGrid:
    """Grid from the slide origin whose cells cover all of ``dimensions``.

    ``dimensions`` is level-0 ``(width, height)``; ``stride`` defaults to ``patch_size``. The last
    row and column may reach past the slide's edge (readers pad with white background), so the
    edge strip narrower than a patch is scanned too. A slide smaller than one patch gives a grid
    with zero rows or columns.
    """
    stride = patch_size if stride is None else stride
    if patch_size < 1 or stride < 1:
        raise ValueError(f"patch_size and stride must be >= 1, got {patch_size}, {stride}")
    if not (slide_mpp > 0 and target_mpp > 0):
        raise ValueError(f"mpp values must be positive, got {slide_mpp}, {target_mpp}")
    scale = target_mpp / slide_mpp
    # Work in target pixels; the epsilon keeps an exact fit from being lost to rounding.
    width, height = (d / scale + 1e-6 for d in dimensions)
    # Cells represent their patch's central stride square: enough of them to reach the far edge.
    margin = (patch_size - stride) / 2
    cols = math.ceil((width - 2 * margin - 1e-6) / stride) if width >= patch_size else 0
    rows = math.ceil((height - 2 * margin - 1e-6) / stride) if height >= patch_size else 0
    return TileGrid((0, 0), (rows, cols), patch_size, stride, target_mpp, slide_mpp)


def tissue_fraction(mask: np.ndarray, mask_downsample: float, grid: TileGrid) -> np.ndarray:
    """Fraction of each cell's represented area (central stride square) that is tissue.

    ``mask`` is a boolean thumbnail mask whose pixel ``(i, j)`` covers level-0
    ``[j*ds, (j+1)*ds) × [i*ds, (i+1)*ds)``. Coverage is area-weighted, so cells smaller than a
    mask pixel get that pixel's value; area outside the mask counts as no tissue. Returns
    float32 ``(rows, cols)``.
    """
    rows, cols = grid.shape
    mask = np.asarray(mask, dtype=bool)
    if rows == 0 or cols == 0 or mask.size == 0:
        return np.zeros((rows, cols), np.float32)
    # Summed-area table with a zero row/column: integral[y, x] = tissue in mask[:y, :x]. Its
    # bilinear interpolation is the exact tissue area up to a fractional corner.
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    integral[1:, 1:] = mask.cumsum(axis=0, dtype=np.float64).cumsum(axis=1)

    x0, y0, x1, y1 = grid.cell_region_level0(0, 0)
    step = grid.stride * grid.scale
    xs0 = (x0 + step * np.arange(cols)) / mask_downsample
    ys0 = (y0 + step * np.arange(rows)) / mask_downsample
    side = (x1 - x0) / mask_downsample
    xs = np.clip(np.stack([xs0, xs0 + side]), 0, mask.shape[1])
    ys = np.clip(np.stack([ys0, ys0 + side]), 0, mask.shape[0])

    def area_to(yi: int, xi: int) -> np.ndarray:
        return _interp_integral(integral, ys[yi], xs[xi])

    tissue = area_to(1, 1) - area_to(0, 1) - area_to(1, 0) + area_to(0, 0)
    return np.clip(tissue / (side * side), 0.0, 1.0).astype(np.float32)


def _interp_integral(integral: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of the summed-area table at the outer product ``ys × xs``."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    yi = np.minimum(np.floor(ys).astype(np.int64), max(h - 1, 0))
    xi = np.minimum(np.floor(xs).astype(np.int64), max(w - 1, 0))
    v = (ys - yi)[:, None]
    u = (xs - xi)[None, :]
    top = integral[np.ix_(yi, xi)] * (1 - u) + integral[np.ix_(yi, xi + 1)] * u
    bottom = integral[np.ix_(yi + 1, xi)] * (1 - u) + integral[np.ix_(yi + 1, xi + 1)] * u
    return top * (1 - v) + bottom * v
