"""Slide reports for tests that need results without scanning."""

from __future__ import annotations

import dataclasses
from typing import Any

from slidescan.report.slide_report import (
    CallReport,
    DistributionReport,
    LesionReport,
    SlideReport,
)


def make_report(**changes: Any) -> SlideReport:
    """A plausible report of one scanned slide with one lesion; ``changes`` replace fields."""
    lesion = LesionReport(3.0, 4.5, 0.8, 0.4, 12, 0.9, 0.99, "micrometastasis", (432.0, 336.0))
    call = CallReport(
        positive=True, category="micrometastasis", largest_diameter_mm=0.8, seed_threshold=0.98,
        extent_threshold=0.7, seed_tiles=3, positive_tiles=12, tissue_tiles=500,
        max_probability=0.99, lesions=(lesion,),
    )  # fmt: skip
    report = SlideReport(
        slide="a.svs", heatmap="a.zarr", geojson="a.geojson", call=call,
        distribution=DistributionReport(False, (), 0.01, 0.6, 256), reliable=True,
        tiles_scanned=500, wall_seconds=1.5, fingerprint="abc",
        settings={"weights_sha256": "x", "model": "m", "engine": "torch", "stride": 96,
                  "seed_threshold": 0.98, "extent_threshold": 0.7, "slidescan_version": "0"},
        attributes={"slide_path": "a.svs", "slide_dimensions": [10, 10], "slide_mpp": 0.5,
                    "mpp": 0.972, "grid": {}, "cell_origin_level0": [0, 0],
                    "cell_level0_px": 96.0},
    )  # fmt: skip
    return dataclasses.replace(report, **changes)
