"""Lesion finding, measuring and the pN-style slide call on synthetic heatmaps; the calibration
of the seed threshold on synthetic probability fields."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from mosaic_slides import cell_mm, lesion_layout

from slidescan.scan.slide_call import (
    SEED_CELLS,
    calibrate_seed_thresholds,
    call_slide,
    false_positive_rate,
    label_lesions,
    lesion_category,
    seed_cells_for,
    slide_critical_seed,
)

BACKGROUND = 0.05


def _lesions(probability: np.ndarray, **kwargs: Any) -> list:
    return label_lesions(probability, **kwargs)[1]


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _grid(mask: np.ndarray, value: float = 0.95) -> np.ndarray:
    return np.where(mask, value, BACKGROUND)


CALL = {"seed_threshold": 0.9, "extent_threshold": 0.5}


@pytest.mark.parametrize("stride_px", [96, 48, 32])
@pytest.mark.parametrize("mpp", [0.972, 0.5])
@pytest.mark.parametrize("diameter_mm", [0.15, 0.65, 2.2, 3.0])
def test_disc_lesion_measured_and_categorised(
    stride_px: int, mpp: float, diameter_mm: float
) -> None:
    size = stride_px * mpp / 1000
    cells = max(20, math.ceil(diameter_mm / size) + 6)
    centre = (cells / 2 + 0.3, cells / 2 - 0.2)
    radius = max(diameter_mm / size / 2 - 0.5, 0.0)
    truth = _disc((cells, cells), centre, radius)
    if not truth.any():
        truth[round(centre[0]), round(centre[1])] = True
    call = call_slide(_grid(truth), cell_mm=size, **CALL)
    assert len(call.lesions) == 1
    lesion = call.lesions[0]
    # The measured diameter is within one cell of the truth (cells quantise the outline).
    assert abs(lesion.diameter_mm - diameter_mm) <= size + 1e-9, (lesion.diameter_mm, size)
    assert lesion.tiles == int(truth.sum())
    assert lesion.area_mm2 == pytest.approx(truth.sum() * size * size)
    assert lesion.row == pytest.approx(np.argwhere(truth)[:, 0].mean())
    assert lesion.col == pytest.approx(np.argwhere(truth)[:, 1].mean())
    expected = lesion_category(diameter_mm)
    if abs(diameter_mm - 0.2) > size and abs(diameter_mm - 2.0) > size:
        assert call.category == lesion.category == expected
    assert call.positive == (call.category in ("micrometastasis", "macrometastasis"))


def test_mosaic_layout_disc_measures_its_diameter() -> None:
    for diameter in (0.65, 2.2):
        layout = lesion_layout(60, diameter, np.random.default_rng(4))
        call = call_slide(_grid(layout.truth), cell_mm=cell_mm(), **CALL)
        assert len(call.lesions) == 1
        assert abs(call.largest_diameter_mm - diameter) <= cell_mm()
        assert call.category == lesion_category(diameter)
    assert not lesion_layout(30, 0.0, np.random.default_rng(0)).truth.any()
    with pytest.raises(ValueError, match="does not fit"):
        lesion_layout(10, 2.2, np.random.default_rng(0))


def test_a_lesion_needs_seed_cells_confident_tiles() -> None:
    grid = np.full((12, 12), BACKGROUND)
    grid[5, 2:9] = 0.6
    grid[5, 3] = grid[5, 6] = 0.95  # two seeds
    assert len(_lesions(grid, cell_mm=0.1, seed_cells=2, **CALL)) == 1
    assert _lesions(grid, cell_mm=0.1, seed_cells=3, **CALL) == []
    grid[5, 8] = 0.91
    assert _lesions(grid, cell_mm=0.1, seed_cells=3, **CALL)[0].tiles == 7
    with pytest.raises(ValueError, match="seed_cells"):
        _lesions(grid, cell_mm=0.1, seed_cells=0, **CALL)


def test_seed_cells_cover_the_same_area_at_every_stride() -> None:
    assert seed_cells_for(96) == SEED_CELLS
    assert seed_cells_for(48) == 4 * SEED_CELLS
    assert seed_cells_for(32) == 9 * SEED_CELLS


def test_straight_line_measures_its_length() -> None:
    grid = np.full((10, 40), BACKGROUND)
    grid[4, 5:30] = 0.95  # 25 cells in a row
    lesions = _lesions(grid, cell_mm=0.1, **CALL)
    assert len(lesions) == 1
    assert lesions[0].diameter_mm == pytest.approx(2.5)
    assert lesions[0].category == "macrometastasis"
    grid[4, 5:30] = BACKGROUND
    grid[np.arange(3), np.arange(3)] = 0.95  # diagonal run of 3: 2√2 + 1 cells
    assert _lesions(grid, cell_mm=0.1, **CALL)[0].diameter_mm == pytest.approx(
        0.1 * (2 * math.sqrt(2) + 1)
    )


def test_large_lesion_diameter_uses_the_outline_correctly() -> None:
    # > 64 cells takes the outline shortcut; compare with brute force over all cell pairs.
    rng = np.random.default_rng(3)
    blob = _disc((60, 60), (30, 28), 20) & (rng.random((60, 60)) < 0.97)
    blob |= _disc((60, 60), (30, 28), 12)
    lesion = max(_lesions(_grid(blob), cell_mm=1.0, **CALL), key=lambda les: les.tiles)
    pts = np.argwhere(blob & (np.arange(60)[:, None] >= 0))
    from scipy import ndimage

    labels, _ = ndimage.label(blob, structure=np.ones((3, 3)))
    main = np.argwhere(labels == labels[30, 28])
    d = np.sqrt(((main[:, None] - main[None]) ** 2).sum(-1)).max()
    assert lesion.diameter_mm == pytest.approx(d + 1)
    assert len(pts) >= len(main)


def test_hysteresis_needs_a_seed_and_extends_to_the_extent_threshold() -> None:
    grid = np.full((20, 20), BACKGROUND)
    grid[5, 2:12] = 0.6  # a run above the extent threshold, no seed: no lesion
    assert _lesions(grid, cell_mm=0.1, **CALL) == []
    grid[5, 7] = 0.95  # one seed: the whole run is the lesion
    lesions = _lesions(grid, cell_mm=0.1, **CALL)
    assert len(lesions) == 1 and lesions[0].tiles == 10
    assert lesions[0].max_probability == pytest.approx(0.95)
    assert lesions[0].mean_probability == pytest.approx((9 * 0.6 + 0.95) / 10)


def test_categories_and_thresholds_of_the_pn_staging() -> None:
    assert lesion_category(0.2) == "itc"
    assert lesion_category(0.2001) == "micrometastasis"
    assert lesion_category(2.0) == "micrometastasis"
    assert lesion_category(2.0001) == "macrometastasis"


def test_slide_takes_its_largest_lesion_and_lists_all() -> None:
    grid = np.full((40, 40), BACKGROUND)
    grid[2, 2] = 0.95  # ITC
    grid[_disc((40, 40), (25, 25), 6)] = 0.97  # macrometastasis at 0.2 mm cells
    call = call_slide(grid, cell_mm=0.2, **CALL)
    assert call.category == "macrometastasis" and call.positive
    assert [les.category for les in call.lesions] == ["macrometastasis", "itc"]
    assert call.largest_diameter_mm == call.lesions[0].diameter_mm
    payload = json.loads(json.dumps(call.to_dict()))
    assert payload["lesions"][1]["tiles"] == 1
    assert payload["category"] == "macrometastasis"


def test_itc_alone_is_not_positive() -> None:
    grid = np.full((10, 10), BACKGROUND)
    grid[4, 4] = 0.99
    call = call_slide(grid, cell_mm=0.0933, **CALL)
    assert call.category == "itc" and not call.positive


def test_no_tissue_and_nan_cells() -> None:
    call = call_slide(np.full((5, 7), np.nan), cell_mm=0.1, **CALL)
    assert (call.category, call.positive, call.tissue_tiles, call.lesions) == (
        "negative", False, 0, ()
    )  # fmt: skip
    grid = np.full((5, 7), np.nan)
    grid[2, 1:6] = 0.95
    grid[2, 3] = np.nan  # glass splits the run in two
    assert len(_lesions(grid, cell_mm=0.1, **CALL)) == 2


@pytest.mark.parametrize(
    "args",
    [
        {"seed_threshold": float("nan"), "extent_threshold": 0.5, "cell_mm": 0.1},
        {"seed_threshold": 0.9, "extent_threshold": float("inf"), "cell_mm": 0.1},
        {"seed_threshold": 0.9, "extent_threshold": 0.5, "cell_mm": 0.0},
    ],
)
def test_bad_arguments_are_rejected(args: dict) -> None:
    with pytest.raises(ValueError):
        call_slide(np.zeros((3, 3)), **args)
    with pytest.raises(ValueError, match="2-D"):
        call_slide(np.zeros(3), seed_threshold=0.9, extent_threshold=0.5, cell_mm=0.1)


# --- calibration on synthetic probability fields ----------------------------------------------


def _negatives(n: int = 20_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).beta(0.6, 3.0, size=n)


@pytest.mark.parametrize("seed_cells", [1, 3])
def test_critical_seed_is_the_boundary_of_the_call(seed_cells: int) -> None:
    grid = np.random.default_rng(2).choice(_negatives(), size=(60, 60))
    common = {"extent_threshold": 0.5, "cell_mm": 0.0933, "seed_cells": seed_cells}
    critical = slide_critical_seed(grid, **common)
    assert 0.5 <= critical <= 1.0
    above = call_slide(grid, seed_threshold=critical, **common)
    below = call_slide(grid, seed_threshold=np.nextafter(critical, 2), **common)
    assert above.positive and not below.positive


def test_calibrated_seed_meets_the_target_on_fresh_slides_and_fp_grows_with_area() -> None:
    neg = _negatives()
    # Both targets from the same simulated slides: a stricter target, a stricter threshold.
    seed, strict = calibrate_seed_thresholds(
        neg, extent_threshold=0.5, cell_mm=0.0933, tissue_cells=5_000, target_rates=(0.05, 0.01),
        seed_cells=3, slides=400, seed=0,
    )  # fmt: skip
    assert 0.5 < seed <= strict < 1
    common = {
        "seed_threshold": seed, "extent_threshold": 0.5, "cell_mm": 0.0933, "slides": 400,
        "seed_cells": 3,
    }  # fmt: skip
    at_size = false_positive_rate(neg, tissue_cells=5_000, seed=1, **common)
    assert at_size <= 0.1  # target 5 %, on slides not used to calibrate
    smaller = false_positive_rate(neg, tissue_cells=1_000, seed=2, **common)
    larger = false_positive_rate(neg, tissue_cells=40_000, seed=3, **common)
    assert smaller <= at_size <= larger and larger > smaller
    stricter = {**common, "seed_threshold": strict}
    assert false_positive_rate(neg, tissue_cells=5_000, seed=1, **stricter) <= at_size


def test_calibrated_seed_still_detects_a_micrometastasis() -> None:
    neg = _negatives()
    (seed,) = calibrate_seed_thresholds(
        neg, extent_threshold=0.5, cell_mm=0.0933, slides=200, seed_cells=3
    )
    rng = np.random.default_rng(5)
    layout = lesion_layout(60, 0.65, rng)
    grid = rng.choice(neg, size=layout.truth.shape)
    grid[layout.truth] = rng.uniform(0.8, 1.0, int(layout.truth.sum()))
    call = call_slide(
        grid, seed_threshold=seed, extent_threshold=0.5, cell_mm=cell_mm(), seed_cells=3
    )
    assert call.positive and call.category == "micrometastasis", call.largest_diameter_mm


def test_calibration_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="normal patches"):
        calibrate_seed_thresholds(np.array([]), extent_threshold=0.5, cell_mm=0.1)
    with pytest.raises(ValueError, match="target_rate"):
        calibrate_seed_thresholds(
            _negatives(100), extent_threshold=0.5, cell_mm=0.1, target_rates=(0.01, 0)
        )


def test_label_lesions_marks_each_lesion_in_report_order() -> None:
    grid = np.full((20, 30), 0.1)
    grid[2:5, 2:5] = 0.99  # 3×3 cells
    grid[10:18, 10:25] = 0.99  # the larger lesion: first in the list, label 1
    grid[0, 29] = 0.99  # one cell: below seed_cells, no lesion
    labels, lesions = label_lesions(
        grid, seed_threshold=0.9, extent_threshold=0.5, cell_mm=0.1, seed_cells=3
    )
    assert [les.tiles for les in lesions] == [8 * 15, 9]
    assert labels.dtype == np.int32 and labels.shape == grid.shape
    assert (labels == 1).sum() == 120 and labels[10:18, 10:25].min() == 1
    assert (labels == 2).sum() == 9 and labels[2:5, 2:5].max() == 2
    assert labels[0, 29] == 0 and labels.max() == 2
