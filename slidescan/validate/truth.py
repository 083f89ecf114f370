"""The truth file of a validation: one row per slide, its label and optionally its patient."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from slidescan.errors import SlidescanError

# Truth labels → the report's categories. Slide-level labels say only negative or positive.
CATEGORY_LABELS = {
    "negative": "negative",
    "itc": "itc",
    "micro": "micrometastasis",
    "macro": "macrometastasis",
}
BINARY_LABELS = {"normal": False, "0": False, "tumor": True, "tumour": True, "1": True}


@dataclass(frozen=True)
class SlideTruth:
    """One slide's truth: a category when known (else only positive/negative), its patient."""

    slide: str
    positive: bool  # micrometastasis or larger (or a slide-level "tumor")
    category: str | None  # negative | itc | micrometastasis | macrometastasis | None
    patient: str | None = None


def read_truth(path: Path) -> dict[str, SlideTruth]:
    """Read ``TRUTH.csv`` (columns ``slide``, ``label``, optional ``patient``), keyed by slide."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            columns = set(rows[0]) if rows else set()
    except OSError as exc:
        raise SlidescanError(f"{path}: cannot read the truth file ({exc.strerror})") from None
    missing = {"slide", "label"} - columns
    if missing:
        raise SlidescanError(
            f"{path}: needs the columns slide and label (missing {sorted(missing)})"
        )
    truth: dict[str, SlideTruth] = {}
    for line, row in enumerate(rows, start=2):
        slide, label = (row["slide"] or "").strip(), (row["label"] or "").strip().lower()
        if not slide:
            raise SlidescanError(f"{path}:{line}: empty slide name")
        if slide in truth:
            raise SlidescanError(f"{path}:{line}: slide {slide} is listed twice")
        patient = (row.get("patient") or "").strip() or None
        if label in CATEGORY_LABELS:
            category = CATEGORY_LABELS[label]
            positive = category in ("micrometastasis", "macrometastasis")
            truth[slide] = SlideTruth(slide, positive, category, patient)
        elif label in BINARY_LABELS:
            truth[slide] = SlideTruth(slide, BINARY_LABELS[label], None, patient)
        else:
            known = ", ".join([*CATEGORY_LABELS, *BINARY_LABELS])
            raise SlidescanError(f"{path}:{line}: unknown label {label!r} (one of {known})")
    if not truth:
        raise SlidescanError(f"{path}: no slides listed")
    return truth
