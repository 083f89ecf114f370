"""The slide report: one typed record, its JSON Schema, and reports of earlier versions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from report_fixtures import make_report

from slidescan.errors import SlidescanError
from slidescan.report.slide_report import (
    SCHEMA_VERSION,
    CallReport,
    DistributionReport,
    LesionReport,
    SlideReport,
    read_slide_report,
    report_schema,
)


def test_round_trip_through_json(tmp_path: Path) -> None:
    report = make_report()
    report.write(tmp_path / "a.json")
    assert read_slide_report(tmp_path / "a.json") == report
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert list(data)[:3] == ["schema_version", "notice", "slide"]


def test_written_report_validates_and_the_schema_catches_damage() -> None:
    validator = jsonschema.Draft202012Validator(report_schema())
    data = make_report().to_dict()
    assert list(validator.iter_errors(data)) == []
    broken = {**data, "call": {**data["call"], "positive": "yes"}}
    assert list(validator.iter_errors(broken))
    assert list(validator.iter_errors({**data, "surprise": 1}))


def test_schema_names_every_field() -> None:
    """A field added to the record without the schema (or the reverse) fails here."""
    schema = report_schema()
    pairs = [
        (SlideReport, schema),
        (CallReport, schema["$defs"]["call"]),
        (LesionReport, schema["$defs"]["lesion"]),
        (DistributionReport, schema["$defs"]["distribution"]),
    ]
    for cls, part in pairs:
        assert {f.name for f in dataclasses.fields(cls)} == set(part["properties"]), cls


def test_reports_of_earlier_versions_are_read(tmp_path: Path) -> None:
    data = make_report().to_dict()
    del data["schema_version"]  # slidescan 0.1.0 before the schema: version 0
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert read_slide_report(tmp_path / "old.json") == make_report()


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("call"),
        lambda d: d.update(schema_version=SCHEMA_VERSION + 1),
        lambda d: d.update(tiles_scanned="many"),
    ],
)
def test_malformed_reports_are_refused_in_one_line(tmp_path: Path, damage) -> None:
    data = make_report().to_dict()
    damage(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(SlidescanError, match="unreadable slide report") as info:
        read_slide_report(tmp_path / "bad.json")
    assert "\n" not in str(info.value)
