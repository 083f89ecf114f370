"""The Camelyon16 FROC on cases worked out by hand."""

from __future__ import annotations

import math

import pytest
from shapely.geometry import Point, box

from slidescan.validate.froc import (
    Detection,
    Region,
    detection_by_size,
    froc,
    lesion_regions,
    match_detections,
)

MPP = 1.0  # 1 µm per pixel: distances in px are µm


def _region(x: float, y: float, diameter_mm: float) -> Region:
    return Region(Point(x, y).buffer(diameter_mm * 500 + 75), diameter_mm)


def test_dilation_merges_close_tumours_and_measures_the_tumour_not_the_dilation() -> None:
    # Two 100 µm squares 100 µm apart merge under 75 µm dilation; one 2 mm away stays apart.
    tumour = box(0, 0, 100, 100).union(box(200, 0, 300, 100)).union(box(2300, 0, 2400, 100))
    regions = sorted(lesion_regions(tumour, MPP), key=lambda r: r.area.bounds[0])
    assert len(regions) == 2
    assert regions[0].diameter_mm == pytest.approx(math.hypot(300, 100) / 1000)
    assert regions[1].diameter_mm == pytest.approx(math.hypot(100, 100) / 1000)
    assert regions[1].itc and not regions[0].itc
    assert regions[0].area.covers(Point(-70, 50))  # within 75 µm of the tumour


def test_hand_worked_froc() -> None:
    # Slide A: lesions L1 (1 mm) and L2 (3 mm) and an ITC (0.1 mm). Slide B: normal.
    a = [_region(0, 0, 1.0), _region(10_000, 0, 3.0), _region(20_000, 0, 0.1)]
    slide_a = match_detections("A", a, [
        Detection(0, 0, 0.9), Detection(10, 10, 0.95),  # two hits on L1: it counts once, 0.95
        Detection(10_000, 0, 0.6),                      # L2
        Detection(20_000, 0, 0.99),                     # on the ITC: ignored
        Detection(50_000, 0, 0.7),                      # false positive
    ])  # fmt: skip
    slide_b = match_detections("B", [], [Detection(5, 5, 0.8), Detection(9, 9, 0.5)])
    assert slide_a.hit_scores == [0.95, 0.6, 0.99]
    assert slide_a.false_positive_scores == [0.7]
    result = froc([slide_a, slide_b])
    # Thresholds 0.95, 0.8, 0.7, 0.6, 0.5 → (FP/slide, sensitivity):
    # 0.95: (0, 1/2); 0.8: (0.5, 1/2); 0.7: (1, 1/2); 0.6: (1, 1); 0.5: (1.5, 1).
    assert result.lesions == 2 and result.slides == 2
    assert result.fps_per_slide == (0.0, 0.0, 0.5, 1.0, 1.0, 1.5)
    assert result.sensitivity == (0.0, 0.5, 0.5, 0.5, 1.0, 1.0)
    assert result.at_rates == {0.25: 0.5, 0.5: 0.5, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    assert result.score == pytest.approx((0.5 + 0.5 + 1 + 1 + 1 + 1) / 6)


def test_missed_lesion_and_no_detections() -> None:
    slide = match_detections("A", [_region(0, 0, 1.0), _region(9000, 0, 0.5)], [
        Detection(0, 0, 0.9),
    ])  # fmt: skip
    result = froc([slide])
    assert result.at_rates[8.0] == 0.5  # the second lesion is never found
    empty = froc([match_detections("B", [], [])])
    assert empty.lesions == 0 and math.isnan(empty.score)


def test_detection_by_size_bands() -> None:
    regions = [_region(0, 0, 0.1), _region(5000, 0, 0.3), _region(9000, 0, 0.4),
               _region(20_000, 0, 2.5)]  # fmt: skip
    slide = match_detections("A", regions, [Detection(5000, 0, 0.9), Detection(20_000, 0, 0.9)])
    bands = {tuple(row["band_mm"]): row for row in detection_by_size([slide])}
    assert bands[(0.0, 0.2)]["lesions"] == 1 and bands[(0.0, 0.2)]["detected"] == 0
    assert bands[(0.2, 0.5)]["lesions"] == 2 and bands[(0.2, 0.5)]["sensitivity"] == 0.5
    assert bands[(2.0, None)]["detected"] == 1
    assert bands[(0.5, 1.0)]["sensitivity"] is None
