"""Which operating point of the lesion call a run used: validation figures hold for it alone."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slidescan.report.slide_report import SlideReport


def operating_point(reports: Iterable[SlideReport]) -> dict[str, Any]:
    """The lesion call's operating point(s) the run used: their names (standard, high, or custom
    for a given --threshold) and the seed thresholds of its reports (a run may mix them)."""
    reports = list(reports)
    return {
        "name": sorted({r.operating_point for r in reports}),
        "seed_threshold": sorted({r.call.seed_threshold for r in reports}),
    }


def operating_point_text(point: dict[str, Any]) -> str:
    """'standard (seed threshold 0.986)', or every point and seed of a mixed run."""
    seeds = ", ".join(f"{t:.4g}" for t in point["seed_threshold"])
    return f"{' and '.join(point['name'])} (seed threshold {seeds})"
