"""render_overlay writes a readable PNG; also checks the grid-extent helper."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidescan.scan.overlay import grid_extent_in_thumbnail, render_overlay


def _thumbnail(height: int = 150, width: int = 200) -> np.ndarray:
    thumb = np.full((height, width, 3), 240, dtype=np.uint8)
    thumb[30:120, 40:170] = (200, 120, 190)  # a pink "tissue" blob on white glass
    return thumb


def _heatmap(rows: int = 9, cols: int = 13) -> np.ndarray:
    grid = np.full((rows, cols), np.nan, dtype=np.float32)
    grid[2:8, 2:11] = 0.1
    grid[3:6, 4:7] = 0.9
    return grid


def test_overlay_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    extent = grid_extent_in_thumbnail((9, 13), cell_px=96, thumbnail_downsample=6.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. an empty contour or a missing glyph
        result = render_overlay(
            _thumbnail(), _heatmap(), out, title="slide_001", threshold=0.5, thumbnail_extent=extent
        )
    assert result == out
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert 600 <= image.width <= 2000 and 400 <= image.height <= 2000


@pytest.mark.parametrize("threshold", [None, 0.95, 0.05])  # no contour / all below / all above
def test_overlay_defaults_and_degenerate_grids(tmp_path: Path, threshold: float | None) -> None:
    grey = np.linspace(0, 1, 50 * 80).reshape(50, 80)
    for name, grid in {"nan": np.full((3, 4), np.nan), "one": np.array([[0.5]])}.items():
        out = render_overlay(grey, grid, tmp_path / f"{name}.png", threshold=threshold)
        with Image.open(out) as image:
            assert image.format == "PNG"


def test_grid_extent_and_bad_extent(tmp_path: Path) -> None:
    assert grid_extent_in_thumbnail((10, 20), 96, 32) == (0.0, 60.0, 30.0, 0.0)
    with pytest.raises(ValueError):
        render_overlay(_thumbnail(), _heatmap(), tmp_path / "x.png", thumbnail_extent=(0, 10, 0, 5))
