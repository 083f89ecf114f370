"""The slide report: one typed record of a scanned slide, written and read only here.

``X.json`` beside each heatmap holds a :class:`SlideReport`. Its shape is the JSON Schema shipped
beside this module (``slide_report.schema.json``); ``schema_version`` says which shape a file has.
Reports written before the version existed (version 0) have the same fields and are read as such;
version 1 lacks ``heatmap_fingerprint`` (such a result is rescanned, never recalled) and calls
tiles cells (``seed_cells``, a lesion's ``cells``), read as today's names.
summary.csv rows, review-page entries and ``validate`` are derived from this record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from slidescan.about import RESEARCH_USE_NOTICE
from slidescan.errors import SlidescanError

SCHEMA_VERSION = 2  # 2: heatmap_fingerprint; tiles, not cells (seed_tiles, a lesion's tiles)
SCHEMA_NAME = "slide_report.schema.json"
NO_TISSUE_WARNING = "no tissue found: nothing was scanned"


@dataclass(frozen=True)
class Lesion:
    """One connected tumour region of the heatmap (``row``/``col``: centroid in grid cells)."""

    row: float
    col: float
    diameter_mm: float
    area_mm2: float
    tiles: int
    mean_probability: float
    max_probability: float
    category: str


@dataclass(frozen=True)
class LesionReport(Lesion):
    """One lesion of the call, its centroid also in level-0 pixels (x, y)."""

    centroid_level0: tuple[float, float]


@dataclass(frozen=True)
class CallNumbers:
    """A slide call and the numbers behind it: shared by the call (``scan.slide_call``) and its
    report."""

    positive: bool
    category: str
    largest_diameter_mm: float
    seed_threshold: float
    extent_threshold: float
    seed_tiles: int  # tiles a lesion needs at the seed threshold
    positive_tiles: int
    tissue_tiles: int
    max_probability: float | None  # None: no tissue, so no probability at all


@dataclass(frozen=True)
class CallReport(CallNumbers):
    """The slide call as reported (lesions largest first)."""

    lesions: tuple[LesionReport, ...] = ()


@dataclass(frozen=True)
class DistributionReport:
    """The out-of-distribution check: is the slide like the training data?"""

    flagged: bool
    reasons: tuple[str, ...] = ()
    outlier_fraction: float | None = None
    median_distance_ratio: float | None = None
    tiles_checked: int = 0


@dataclass(frozen=True)
class SlideReport:
    """Everything known about one scanned slide."""

    slide: str
    heatmap: str
    geojson: str
    call: CallReport
    distribution: DistributionReport
    reliable: bool
    tiles_scanned: int
    wall_seconds: float
    fingerprint: str
    warnings: tuple[str, ...] = ()
    # The fingerprint of what made the heatmap alone: equal, a new call needs no new scan.
    heatmap_fingerprint: str = ""
    # What made the result (fingerprint input) and the heatmap's geometry, as in the zarr attrs.
    settings: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    notice: str = RESEARCH_USE_NOTICE
    schema_version: int = SCHEMA_VERSION

    @property
    def scanned(self) -> bool:
        """False when the slide had no tissue, so nothing was scanned."""
        return self.tiles_scanned > 0

    @property
    def operating_point(self) -> str:
        """The lesion call's operating point: standard, a named one of the card (high), or
        custom (a given seed threshold). Reports name it only when it is not the standard."""
        return str(self.settings.get("operating_point", "standard"))

    def summary(self) -> dict[str, Any]:
        """The fields a heatmap's zarr attributes repeat (call, check, counts, fingerprint)."""
        data = self.to_dict()
        keys = (
            "call", "distribution", "reliable", "tiles_scanned", "warnings", "wall_seconds",
            "fingerprint", "schema_version",
        )  # fmt: skip
        return {key: data[key] for key in keys}

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types, in the schema's key order."""
        data = json.loads(json.dumps(asdict(self)))  # tuples become lists, as in the file
        order = ("schema_version", "notice", "slide", "heatmap", "geojson")
        return {**{key: data[key] for key in order}, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlideReport:
        """Read a report dict (any schema version up to this one); ``ValueError`` if malformed."""
        try:
            version = int(data.get("schema_version", 0))
            if version > SCHEMA_VERSION:
                raise ValueError(f"schema_version {version} is newer than this slidescan reads")
            call = dict(data["call"])
            if "seed_cells" in call:  # version 1 called tiles cells
                call["seed_tiles"] = call.pop("seed_cells")
            call["lesions"] = tuple(_lesion(lesion) for lesion in call.get("lesions", ()))
            check = dict(data["distribution"])
            check["reasons"] = tuple(check.get("reasons", ()))
            top = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            top.update(
                call=_build(CallReport, call),
                distribution=_build(DistributionReport, check),
                warnings=tuple(data.get("warnings", ())),
                schema_version=SCHEMA_VERSION,
            )
            report = cls(**top)
            _check_types(report)
            return report
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a slide report ({type(exc).__name__}: {exc})") from None

    def write(self, path: Path) -> None:
        """Write the report as indented JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def read_slide_report(path: Path) -> SlideReport:
    """The report at ``path`` (``X.json``); ``SlidescanError`` if missing or malformed."""
    try:
        return SlideReport.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise SlidescanError(f"{path}: unreadable slide report ({exc})") from None


def report_schema() -> dict[str, Any]:
    """The JSON Schema every slide report validates against (shipped with the package)."""
    text = resources.files("slidescan.report").joinpath(SCHEMA_NAME).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _lesion(data: dict[str, Any]) -> LesionReport:
    values = dict(data)
    if "cells" in values:  # version 1
        values["tiles"] = values.pop("cells")
    values["centroid_level0"] = tuple(float(v) for v in values["centroid_level0"])
    return _build(LesionReport, values)


def _build(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in known})


def _check_types(report: SlideReport) -> None:
    numbers = (report.wall_seconds, report.call.largest_diameter_mm, report.call.max_probability)
    if not all(isinstance(v, int | float) for v in numbers):
        raise ValueError("non-numeric sizes or times")
    if not isinstance(report.tiles_scanned, int) or not isinstance(report.call.positive, bool):
        raise ValueError("tiles_scanned must be an integer and call.positive a boolean")
