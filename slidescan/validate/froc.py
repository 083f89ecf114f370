"""Lesion-level FROC, as Camelyon16 scored it. Pure logic on shapely geometry and points.

Each annotated tumour area is dilated by 75 µm and split into connected regions, each one
lesion. A detection (a reported lesion: its score and centroid) inside a region hits it; each
region counts once, with its best-scoring hit. Regions whose tumour measures ≤ 0.2 mm are ITC:
never missed, and a hit on one is neither a true nor a false positive. Any other detection is
a false positive. Sensitivity at an average number of false positives per slide is the best
sensitivity of the thresholds that stay at or below that number (a step curve).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from shapely import geometry, unary_union
from shapely.geometry.base import BaseGeometry

DILATION_UM = 75.0
ITC_MM = 0.2
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Detection by the true lesion's longest diameter (mm): ITC, then metastases by size.
SIZE_BANDS = ((0.0, 0.2), (0.2, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, float("inf")))


@dataclass(frozen=True)
class Detection:
    """One reported lesion: its score and its centroid (level-0 px, the annotations' frame)."""

    x: float
    y: float
    score: float
    diameter_mm: float | None = None


@dataclass(frozen=True)
class Region:
    """One annotated lesion: the dilated region and its tumour's longest diameter."""

    area: BaseGeometry
    diameter_mm: float

    @property
    def itc(self) -> bool:
        """Isolated tumour cells: neither missed nor a false positive when hit."""
        return self.diameter_mm <= ITC_MM


@dataclass
class SlideLesions:
    """One slide's regions and what the detections did on them."""

    slide: str
    regions: list[Region]
    hit_scores: list[float | None] = field(default_factory=list)  # best hit per region
    hit_diameters: list[float | None] = field(default_factory=list)  # its measured diameter
    false_positive_scores: list[float] = field(default_factory=list)


def lesion_regions(tumour: BaseGeometry, mpp: float) -> list[Region]:
    """The tumour area's lesions: 75 µm-dilated connected regions, each with its tumour's
    longest diameter (undilated) in mm."""
    if tumour.is_empty:
        return []
    dilated = unary_union(tumour.buffer(DILATION_UM / mpp))
    parts = list(getattr(dilated, "geoms", [dilated]))
    return [
        Region(part, _longest_diameter(tumour.intersection(part)) * mpp / 1000) for part in parts
    ]


def _longest_diameter(shape: BaseGeometry) -> float:
    hull = shape.convex_hull
    if hull.is_empty:
        return 0.0
    points = np.asarray(getattr(hull, "exterior", hull).coords)
    if len(points) < 2:
        return 0.0
    diffs = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diffs**2).sum(-1)).max())


def match_detections(
    slide: str, regions: list[Region], detections: Sequence[Detection]
) -> SlideLesions:
    """Assign each detection to the region it falls in (or call it a false positive)."""
    out = SlideLesions(slide, regions, [None] * len(regions), [None] * len(regions))
    for det in detections:
        point = geometry.Point(det.x, det.y)
        inside = [i for i, region in enumerate(regions) if region.area.covers(point)]
        if not inside:
            out.false_positive_scores.append(det.score)
            continue
        for i in inside:
            best = out.hit_scores[i]
            if best is None or det.score > best:
                out.hit_scores[i], out.hit_diameters[i] = det.score, det.diameter_mm
    return out


@dataclass(frozen=True)
class Froc:
    """The FROC curve and its summary over a set of slides."""

    lesions: int  # non-ITC annotated lesions
    slides: int
    fps_per_slide: tuple[float, ...]  # one point per threshold, most permissive last
    sensitivity: tuple[float, ...]
    at_rates: dict[float, float]  # sensitivity at FP_RATES
    score: float  # the mean of at_rates: the Camelyon16 FROC score


def froc(slides: Sequence[SlideLesions], rates: Sequence[float] = FP_RATES) -> Froc:
    """The FROC over ``slides`` (every slide counts in the false positives per slide)."""
    hits = [
        s if s is not None else -np.inf
        for sl in slides
        for s, region in zip(sl.hit_scores, sl.regions, strict=True)
        if not region.itc
    ]
    fps = [s for sl in slides for s in sl.false_positive_scores]
    n_lesions, n_slides = len(hits), max(len(slides), 1)
    hit_arr, fp_arr = np.asarray(hits, float), np.asarray(fps, float)
    thresholds = sorted({*hits, *fps} - {-np.inf}, reverse=True)
    fps_curve, sens_curve = [0.0], [0.0]
    for t in thresholds:
        fps_curve.append(float((fp_arr >= t).sum()) / n_slides)
        sens_curve.append(float((hit_arr >= t).sum()) / n_lesions if n_lesions else float("nan"))
    at = {
        rate: max((s for f, s in zip(fps_curve, sens_curve, strict=True) if f <= rate), default=0.0)
        for rate in rates
    }
    mean = float(np.mean(list(at.values()))) if n_lesions else float("nan")
    return Froc(n_lesions, len(slides), tuple(fps_curve), tuple(sens_curve), at, mean)


def detection_by_size(slides: Sequence[SlideLesions]) -> list[dict[str, object]]:
    """Annotated lesions and how many were hit, by their longest diameter (``SIZE_BANDS``)."""
    rows = []
    pairs = list(
        itertools.chain.from_iterable(zip(sl.regions, sl.hit_scores, strict=True) for sl in slides)
    )
    for low, high in SIZE_BANDS:
        band = [
            hit
            for region, hit in pairs
            if low < region.diameter_mm <= high or (low == 0 and region.diameter_mm == 0)
        ]
        found = sum(hit is not None for hit in band)
        rows.append({
            "band_mm": [low, None if high == float("inf") else high],
            "lesions": len(band), "detected": found,
            "sensitivity": found / len(band) if band else None,
        })  # fmt: skip
    return rows
