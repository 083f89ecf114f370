"""From a probability map to everything the call writes: the lesion call, the slide report,
the QuPath GeoJSON and the overlay. Shared by a fresh scan and by a *recall*, which redoes only
the call from a stored heatmap when nothing but the call's thresholds changed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidescan.report.lesion_geojson import lesion_feature_collection
from slidescan.report.slide_report import (
    NO_TISSUE_WARNING,
    CallReport,
    DistributionReport,
    LesionReport,
    SlideReport,
)
from slidescan.scan.distribution_check import DistributionCheck
from slidescan.scan.scan_result import verdict_text
from slidescan.scan.slide_call import SlideCall, call_slide, seed_cells_for
from slidescan.scan.slide_geometry import SlideGeometry

# Settings that change only the call, never the heatmap: a change to them is recalled.
CALL_SETTINGS = ("seed_threshold", "extent_threshold", "operating_point")


@dataclass(frozen=True)
class CallInputs:
    """What the call is made from: the maps, where they lie, and the distribution verdict."""

    probability: np.ndarray
    tissue: np.ndarray
    geometry: SlideGeometry
    distribution: DistributionCheck
    tiles_scanned: int


def make_call(
    probability: np.ndarray, geometry: SlideGeometry, seed: float, extent: float
) -> SlideCall:
    """The lesion call of a heatmap at these thresholds."""
    grid = geometry.grid
    return call_slide(
        probability, seed_threshold=seed, extent_threshold=extent,
        cell_mm=grid.stride * grid.target_mpp / 1000.0,
        seed_cells=seed_cells_for(grid.stride, grid.patch_size),
    )  # fmt: skip


def slide_report(
    slide: str,
    outputs_heatmap: Path,
    inputs: CallInputs,
    call: SlideCall,
    *,
    seconds: float,
    fingerprints: tuple[str, str],
    settings: dict[str, Any],
    attributes: dict[str, Any],
) -> SlideReport:
    """The typed report of a call (``fingerprints``: the whole result's, the heatmap's)."""
    distribution = inputs.distribution
    scanned = inputs.tiles_scanned > 0
    return SlideReport(
        slide=slide, heatmap=outputs_heatmap.name,
        geojson=outputs_heatmap.with_suffix(".geojson").name,
        call=_call_report(call, inputs.geometry), distribution=_distribution_report(distribution),
        reliable=not distribution.flagged, tiles_scanned=inputs.tiles_scanned,
        warnings=() if scanned else (NO_TISSUE_WARNING,), wall_seconds=round(seconds, 3),
        fingerprint=fingerprints[0], heatmap_fingerprint=fingerprints[1], settings=settings,
        attributes=attributes,
    )  # fmt: skip


def distribution_of(report: SlideReport) -> DistributionCheck:
    """A stored report's distribution verdict (it depends on the heatmap's settings only)."""
    d = report.distribution
    return DistributionCheck(
        d.flagged, tuple(d.reasons), d.outlier_fraction, d.median_distance_ratio, d.tiles_checked
    )


def write_geojson(
    path: Path, call: SlideCall, geometry: SlideGeometry, slide: str, key: str
) -> None:
    """The lesions as QuPath annotations (an empty collection when there are none)."""
    collection = lesion_feature_collection(
        call.lesion_labels, call.lesions, cell_origin_level0=geometry.cell_origin_level0,
        cell_level0_px=geometry.cell_level0_px, slide=slide,
        slide_size=geometry.slide_dimensions, image_offset=geometry.bounds_origin,
        namespace=key,
    )  # fmt: skip
    path.write_text(json.dumps(collection) + "\n")


def write_overlay(
    path: Path,
    thumb: tuple[np.ndarray, float],
    inputs: CallInputs,
    call: SlideCall,
    slide: str,
) -> None:
    """The PNG: heatmap, scanned tissue and lesion outlines over the slide's thumbnail."""
    from slidescan.report.overlay import grid_extent_in_thumbnail, render_overlay

    image, downsample = thumb
    geometry = inputs.geometry
    extent = grid_extent_in_thumbnail(
        inputs.probability.shape, geometry.cell_level0_px, downsample,
        geometry.cell_origin_level0,
    )  # fmt: skip
    title = f"{slide}\n{verdict_text(call, inputs.distribution)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    render_overlay(
        image, inputs.probability, path, title=title, thumbnail_extent=extent,
        tissue=inputs.tissue, lesion_labels=call.lesion_labels, lesions=call.lesions,
        seed_threshold=call.seed_threshold, extent_threshold=call.extent_threshold,
        um_per_px=geometry.slide_mpp * downsample,
    )  # fmt: skip


def _call_report(call: SlideCall, geometry: SlideGeometry) -> CallReport:
    """The call for the report, lesion centroids also in level-0 pixels."""
    values = call.to_dict()
    lesions = []
    for lesion in values.pop("lesions"):
        x, y = geometry.grid.cell_center_level0(lesion["row"], lesion["col"])
        lesions.append(
            LesionReport(**lesion, centroid_level0=(round(float(x), 1), round(float(y), 1)))
        )
    return CallReport(**values, lesions=tuple(lesions))


def _distribution_report(check: DistributionCheck) -> DistributionReport:
    return DistributionReport(**{**check.to_dict(), "reasons": tuple(check.reasons)})
