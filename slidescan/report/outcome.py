"""One slide's result in a run: its status and the summary.csv row derived from its report."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from slidescan.report.slide_report import SlideReport
from slidescan.vocabulary import SlideStatus

SUMMARY_FIELDS = [
    "slide", "status", "positive", "category", "largest_lesion_mm", "lesions", "reliable",
    "flags", "operating_point", "seed_threshold", "tiles", "seconds", "heatmap", "error",
    "finished",
]  # fmt: skip


@dataclass
class SlideOutcome:
    """One row of summary.csv."""

    slide: str
    status: SlideStatus
    positive: bool | None = None
    category: str = ""
    largest_lesion_mm: float | None = None
    lesions: int | None = None
    reliable: bool | None = None
    flags: str = ""  # why the call is unreliable (out of distribution, scale)
    operating_point: str = ""  # the lesion call's: standard, a named one (high), or custom
    seed_threshold: float | None = None
    tiles: int | None = None
    seconds: float | None = None
    heatmap: str = ""
    error: str = ""
    detail: str = ""  # the failure's full traceback: for LOG_NAME, never for summary.csv
    finished: str = ""  # when this run recorded it (UTC, ISO 8601): the newer row wins a merge

    def row(self) -> dict[str, object]:
        """The CSV row (empty cells for unknowns)."""
        values: dict[str, object] = {
            "slide": self.slide,
            "status": self.status,
            "positive": _bool_cell(self.positive),
            "category": self.category,
            "largest_lesion_mm": (
                "" if self.largest_lesion_mm is None else f"{self.largest_lesion_mm:.3f}"
            ),
            "lesions": "" if self.lesions is None else self.lesions,
            "reliable": _bool_cell(self.reliable),
            "flags": self.flags,
            "operating_point": self.operating_point,
            "seed_threshold": "" if self.seed_threshold is None else f"{self.seed_threshold:.6g}",
            "tiles": "" if self.tiles is None else self.tiles,
            "seconds": "" if self.seconds is None else f"{self.seconds:.2f}",
            "heatmap": self.heatmap,
            "error": self.error,
            "finished": self.finished,
        }
        return values


def _bool_cell(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def outcome_from_report(report: SlideReport, slide: str, status: SlideStatus) -> SlideOutcome:
    """A slide's summary row, derived from its report."""
    call, check = report.call, report.distribution
    return SlideOutcome(
        slide=slide, status=status, positive=call.positive, category=call.category,
        largest_lesion_mm=call.largest_diameter_mm, lesions=len(call.lesions),
        reliable=report.reliable, flags="; ".join(check.reasons),
        operating_point=report.operating_point,
        seed_threshold=call.seed_threshold, tiles=report.tiles_scanned,
        seconds=round(report.wall_seconds, 2), heatmap=report.heatmap,
    )  # fmt: skip


def outcome_from_previous(
    slide: Path, heatmap: Path, report: dict[str, Any]
) -> SlideOutcome | None:
    """A slide finished by an earlier run, from its JSON report; None when the report is
    incomplete (then the slide is scanned again)."""
    try:
        parsed = SlideReport.from_dict(report)
    except ValueError:
        return None
    return outcome_from_report(
        replace(parsed, heatmap=heatmap.name), slide.name, SlideStatus.skipped
    )


def under_key(outcome: SlideOutcome, key: str) -> SlideOutcome:
    """``outcome`` under the slide's batch key (its path relative to the folder scanned
    recursively), its heatmap then relative to the output folder."""
    outcome.slide = key
    folder = PurePosixPath(key).parent
    if outcome.heatmap and folder != PurePosixPath("."):
        outcome.heatmap = (folder / outcome.heatmap).as_posix()
    return outcome
