"""call_slide on small hand-made heatmaps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slidescan.slide_call import SlideCall, call_slide

CELL_MM = 96 * 0.972e-3  # one 96 px patch at 0.972 um/px


def _background(shape: tuple[int, int] = (12, 12), value: float = 0.1) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


def test_block_of_tumour_is_positive_with_its_area() -> None:
    grid = _background()
    grid[4:7, 5:8] = 0.9
    call = call_slide(grid, threshold=0.5, cell_mm=CELL_MM)
    assert call.positive
    assert call.score == pytest.approx(0.9)  # the block's centre window is all tumour
    assert call.positive_tiles == 9
    assert call.tissue_tiles == 144
    assert call.largest_region_mm2 == pytest.approx(9 * CELL_MM**2)
    assert call.max_probability == pytest.approx(0.9)
    assert call.threshold == 0.5


def test_isolated_noisy_tile_is_smoothed_away() -> None:
    grid = _background()
    grid[6, 6] = 0.99
    smoothed = call_slide(grid, threshold=0.5, cell_mm=CELL_MM, smoothing=3)
    assert not smoothed.positive
    assert smoothed.score == pytest.approx((0.99 + 8 * 0.1) / 9)
    assert smoothed.positive_tiles == 1  # the raw tile is still counted and reported
    assert smoothed.max_probability == pytest.approx(0.99)
    plain = call_slide(grid, threshold=0.5, cell_mm=CELL_MM, smoothing=1)
    assert plain.positive and plain.score == pytest.approx(0.99)
    assert plain.largest_region_mm2 == pytest.approx(CELL_MM**2)


def test_no_tissue_is_a_valid_negative_call() -> None:
    call = call_slide(np.full((5, 7), np.nan), threshold=0.5, cell_mm=CELL_MM)
    assert call == SlideCall(False, 0.0, 0.5, 0.5, 0, 0, 0.0, 0.0)


def test_nan_cells_are_left_out_of_the_mean() -> None:
    grid = np.full((8, 8), np.nan, dtype=np.float32)
    grid[3:5, 3:5] = 0.8  # small tissue island: NaN neighbours must not dilute it
    call = call_slide(grid, threshold=0.5, cell_mm=CELL_MM)
    assert call.positive and call.score == pytest.approx(0.8)
    assert call.tissue_tiles == 4 and call.positive_tiles == 4


def test_regions_are_8_connected_and_largest_wins() -> None:
    grid = _background((10, 10))
    grid[[1, 2, 3], [1, 2, 3]] = 0.7  # a diagonal line: one 8-connected region of 3
    grid[8, 8] = 0.7
    call = call_slide(grid, threshold=0.5, cell_mm=0.1, smoothing=1)
    assert call.positive_tiles == 4
    assert call.largest_region_mm2 == pytest.approx(3 * 0.01)
    too_small = call_slide(grid, threshold=0.5, cell_mm=0.1, smoothing=1, min_region_cells=4)
    assert not too_small.positive


def test_to_dict_is_json_ready() -> None:
    grid = _background()
    grid[0, 0] = np.nan
    payload = call_slide(grid, threshold=0.5, cell_mm=CELL_MM).to_dict()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["positive"] is False and payload["tissue_tiles"] == 143


@pytest.mark.parametrize(
    "kwargs",
    [{"smoothing": 2}, {"smoothing": 0}, {"cell_mm": 0.0}, {"threshold": float("nan")}],
)
def test_rejects_bad_parameters(kwargs: dict) -> None:
    args = {"threshold": 0.5, "cell_mm": CELL_MM, **kwargs}
    with pytest.raises(ValueError):
        call_slide(_background(), **args)


def test_tile_threshold_counts_tiles_while_slide_threshold_decides() -> None:
    from slidescan.slide_call import call_slide

    grid = np.full((5, 5), 0.2)
    grid[2, 2] = 0.7
    call = call_slide(grid, threshold=0.8, tile_threshold=0.5, cell_mm=0.1, smoothing=1)
    assert call.positive_tiles == 1 and not call.positive
    assert call.tile_threshold == 0.5 and call.threshold == 0.8


def test_smoothing_window_spans_three_patches_whatever_the_stride() -> None:
    from slidescan.slide_call import smoothing_cells

    assert smoothing_cells(96, 96) == 3
    assert smoothing_cells(96, 32) == 9
    assert smoothing_cells(96, 48) == 7  # 6 rounded up to odd


def test_calibrated_slide_threshold_bounds_normal_neighbourhoods() -> None:
    from slidescan.slide_call import calibrate_slide_threshold

    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(2000, int), np.ones(2000, int)]
    probs = np.r_[rng.beta(2, 6, 2000), rng.beta(6, 2, 2000)]
    t = calibrate_slide_threshold(labels, probs, quantile=0.99, seed=0)
    # Independent 3×3 windows of negatives exceed it about 1% of the time…
    windows = rng.choice(probs[:2000], size=(20000, 9)).mean(axis=1)
    assert 0.005 < (windows >= t).mean() < 0.02
    # …and it sits well above the mean negative probability, below the positives' mean.
    assert probs[:2000].mean() < t < probs[2000:].mean()
    with pytest.raises(ValueError):
        calibrate_slide_threshold(np.ones(3, int), np.ones(3) * 0.9)


def test_lone_tile_among_glass_does_not_score_when_real_tissue_exists() -> None:
    grid = np.full((9, 9), np.nan)
    grid[0:4, 0:4] = 0.1  # a tissue fragment, all normal
    grid[8, 8] = 0.99  # one isolated tile at the edge of the glass
    call = call_slide(grid, threshold=0.5, cell_mm=CELL_MM)
    assert not call.positive and call.score == pytest.approx(0.1)
    assert call.positive_tiles == 1  # still counted as a positive tile
