"""Patients of a batch: which slides (one lymph node each) belong to whom, and their pN stages."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from slidescan.batch.pn_stage import pn_stage
from slidescan.errors import SlidescanError
from slidescan.io.atomic import atomic_write

PATIENTS_NAME = "patients.csv"
COLUMNS = ("patient", "stage", "nodes_with_metastases", "slides", "failed", "unreliable", "note")


@dataclass(frozen=True)
class NodeResult:
    """One slide's contribution: its category (None when it failed) and whether it is trusted."""

    category: str | None
    reliable: bool = True


def read_patient_map(path: Path) -> dict[str, str]:
    """``MAP.csv`` (columns ``slide``, ``patient``) as slide name → patient."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise SlidescanError(f"{path}: cannot read the patient map ({exc.strerror})") from None
    if not rows or not {"slide", "patient"} <= set(rows[0]):
        raise SlidescanError(f"{path}: needs the columns slide and patient, one row per slide")
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        slide, patient = (row["slide"] or "").strip(), (row["patient"] or "").strip()
        if not slide or not patient:
            raise SlidescanError(f"{path}:{line}: empty slide or patient")
        if slide in mapping:
            raise SlidescanError(f"{path}:{line}: slide {slide} is listed twice")
        mapping[slide] = patient
    return mapping


def stage_patients(
    patient_of: Mapping[str, str], nodes: Mapping[str, NodeResult]
) -> list[dict[str, object]]:
    """One row per patient (``COLUMNS``): the stage from the nodes that were scanned, marked when a
    slide failed, was not scanned or is unreliable, so a stage is never silently incomplete."""
    by_patient: dict[str, list[str]] = {}
    for slide, patient in patient_of.items():
        by_patient.setdefault(patient, []).append(slide)
    rows = []
    for patient in sorted(by_patient):
        slides = sorted(by_patient[patient])
        failed = [s for s in slides if s not in nodes or nodes[s].category is None]
        scanned = [nodes[s] for s in slides if s not in failed]
        unreliable = [s for s in slides if s not in failed and not nodes[s].reliable]
        categories = [str(n.category) for n in scanned]
        metastatic = sum(c in ("micrometastasis", "macrometastasis") for c in categories)
        notes = []
        if failed:
            notes.append(f"INCOMPLETE: {len(failed)} of {len(slides)} slides not scanned")
        if unreliable:
            notes.append(f"UNRELIABLE: {len(unreliable)} slides unlike the training data")
        rows.append({
            "patient": patient, "stage": pn_stage(categories), "nodes_with_metastases": metastatic,
            "slides": len(slides), "failed": " ".join(failed), "unreliable": " ".join(unreliable),
            "note": "; ".join(notes),
        })  # fmt: skip
    return rows


def write_patients(path: Path, rows: list[dict[str, object]]) -> None:
    """Write the patients' rows as CSV."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
