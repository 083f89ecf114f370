"""Grid geometry and per-cell tissue fractions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from slide_fixtures import square_image, write_pyramid

from slidescan.io.slide import open_slide
from slidescan.scan.tiling import TileGrid, make_grid, tissue_fraction

TARGET = 0.972


def test_make_grid_covers_the_whole_slide() -> None:
    # 0.25 µm/px slide: a 96 px patch at 0.972 µm/px spans 373.248 level-0 px.
    grid = make_grid((2000, 1200), 0.25, TARGET)
    assert grid.shape == (4, 6)  # 1200 / 373.2 = 3.2, 2000 / 373.2 = 5.4: partial edge cells too
    assert grid.origin == (0, 0) and grid.patch_size == grid.stride == 96
    assert grid.scale == pytest.approx(TARGET / 0.25)
    x, y = grid.cell_to_level0(3, 5)
    assert (x, y) == (round(5 * 96 * grid.scale), round(3 * 96 * grid.scale))
    # The last cells start inside the slide and reach past its edge: no strip left unscanned.
    assert x < 2000 < x + 96 * grid.scale and y < 1200 < y + 96 * grid.scale


def test_make_grid_exact_fit_and_stride() -> None:
    assert make_grid((960, 480), 1.0, 1.0).shape == (5, 10)
    assert make_grid((959, 480), 1.0, 1.0).shape == (5, 10)  # the last column is partial
    assert make_grid((961, 480), 1.0, 1.0).shape == (5, 11)  # one pixel more: one more cell
    assert make_grid((960, 480), 1.0, 1.0, stride=48).shape == (9, 19)
    assert make_grid((50, 50), 1.0, 1.0).shape == (0, 0)
    with pytest.raises(ValueError):
        make_grid((960, 480), 1.0, 1.0, stride=0)


def test_cell_centre_and_region() -> None:
    grid = make_grid((1000, 1000), 0.5, 1.0, patch_size=96, stride=64)
    assert grid.cell_center_level0(1, 2) == pytest.approx((2 * 128 + 96, 128 + 96))
    # The represented area is the central stride square, 128 level-0 px wide.
    assert grid.cell_region_level0(1, 2) == pytest.approx((288, 160, 416, 288))


def test_attrs_round_trip() -> None:
    grid = make_grid((2000, 1200), 0.25, TARGET, stride=48)
    attrs = json.loads(json.dumps(grid.to_attrs()))
    assert TileGrid.from_attrs(attrs) == grid


def test_mark_lands_in_the_expected_cell(tmp_path: Path) -> None:
    # A 20 µm mark whose top-left sits at (500, 300) µm on a 0.25 µm/px slide.
    at_um = (500.0, 300.0)
    path = write_pyramid(tmp_path / "mark.tif", square_image(0.25, 800.0, 20.0, at_um), mpp=0.25)
    with open_slide(path) as slide:
        grid = make_grid(slide.dimensions, slide.mpp, TARGET)
        cell_um = 96 * TARGET
        row, col = int(at_um[1] // cell_um), int(at_um[0] // cell_um)
        patch = slide.read_at_mpp(grid.cell_to_level0(row, col), (96, 96), TARGET)
        neighbour = slide.read_at_mpp(grid.cell_to_level0(row, col + 1), (96, 96), TARGET)
    ys, xs = np.nonzero(patch.mean(axis=2) < 200)
    assert xs.min() == pytest.approx(at_um[0] / TARGET - col * 96, abs=1)
    assert ys.min() == pytest.approx(at_um[1] / TARGET - row * 96, abs=1)
    assert not (neighbour.mean(axis=2) < 200).any()


def _brute_force(mask: np.ndarray, ds: int, grid: TileGrid) -> np.ndarray:
    """Fractions by upsampling the mask to level 0 (integer geometry only)."""
    level0 = np.repeat(np.repeat(mask, ds, axis=0), ds, axis=1)
    out = np.zeros(grid.shape)
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            x0, y0, x1, y1 = (round(v) for v in grid.cell_region_level0(r, c))
            out[r, c] = level0[y0:y1, x0:x1].sum() / ((x1 - x0) * (y1 - y0))
    return out


@pytest.mark.parametrize(
    ("ds", "patch", "stride"), [(3, 4, 4), (10, 4, 4), (3, 6, 4), (1, 5, 5), (7, 8, 2)]
)
def test_tissue_fraction_matches_brute_force(ds: int, patch: int, stride: int) -> None:
    rng = np.random.default_rng(ds * 100 + patch)
    mask = rng.random((12, 15)) < 0.4
    grid = make_grid((15 * ds, 12 * ds), 1.0, 1.0, patch_size=patch, stride=stride)
    frac = tissue_fraction(mask, ds, grid)
    assert frac.dtype == np.float32 and frac.shape == grid.shape
    np.testing.assert_allclose(frac, _brute_force(mask, ds, grid), atol=1e-5)


def test_tissue_fraction_simple_values() -> None:
    mask = np.zeros((4, 8), bool)
    mask[:, :3] = True  # tissue over level-0 x < 30 with 10 px mask pixels
    grid = make_grid((80, 40), 0.5, 1.0, patch_size=10)  # 20 level-0 px cells
    frac = tissue_fraction(mask, 10.0, grid)
    np.testing.assert_allclose(frac, [[1.0, 0.5, 0.0, 0.0]] * 2)


def test_tissue_fraction_cells_smaller_than_mask_pixels() -> None:
    mask = np.array([[True, False]])
    grid = make_grid((200, 100), 1.0, 1.0, patch_size=25)  # 4 cells per mask pixel side
    frac = tissue_fraction(mask, 100.0, grid)
    assert frac.shape == (4, 8)
    np.testing.assert_array_equal(frac[:, :4], 1.0)
    np.testing.assert_array_equal(frac[:, 4:], 0.0)


def test_tissue_fraction_outside_mask_is_zero() -> None:
    grid = make_grid((100, 100), 1.0, 1.0, patch_size=10)
    frac = tissue_fraction(np.ones((5, 5), bool), 10.0, grid)  # mask covers only 50×50
    np.testing.assert_array_equal(frac[:5, :5], 1.0)
    assert frac[5:].sum() == 0 and frac[:, 5:].sum() == 0
