"""Slide-level agreement with the truth: the slide score, proportions with Wilson CIs, kappa."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from slidescan.report.slide_report import SlideReport
from slidescan.vocabulary import CATEGORY_RANK

CATEGORIES = tuple(CATEGORY_RANK)  # negative, itc, micrometastasis, macrometastasis
SLIDE_SCORE_RULE = (
    "0.5 × the highest tile probability on a slide without lesions; 0.5 + 0.5 × (1 − e^−d) "
    "on a slide whose largest lesion measures d mm (ranks lesion size first)"
)


def slide_score(report: SlideReport) -> float:
    """The slide's score for ROC analysis (``SLIDE_SCORE_RULE``), in [0, 1]."""
    call = report.call
    if call.lesions:
        return 0.5 + 0.5 * (1.0 - math.exp(-call.largest_diameter_mm))
    return 0.5 * float(call.max_probability or 0.0)


def wilson(successes: int, n: int, z: float = 1.959964) -> dict[str, object]:
    """A proportion with its Wilson score 95% interval (``None`` when ``n`` is 0)."""
    if n == 0:
        return {"value": None, "ci": [None, None], "count": "0/0"}
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"value": p, "ci": [max(0.0, centre - half), min(1.0, centre + half)],
            "count": f"{successes}/{n}"}  # fmt: skip


def category_agreement(truth: list[str], called: list[str]) -> dict[str, object]:
    """The 4×4 confusion matrix (rows truth, columns call) and quadratic-weighted kappa."""
    index = {c: i for i, c in enumerate(CATEGORIES)}
    t = np.array([index[c] for c in truth], dtype=int)
    c = np.array([index[x] for x in called], dtype=int)
    matrix = confusion_matrix(t, c, labels=list(range(len(CATEGORIES))))
    kappa = quadratic_kappa(t, c, len(CATEGORIES)) if len(t) else None
    return {"labels": list(CATEGORIES), "matrix": matrix.tolist(), "kappa": kappa, "n": len(t)}


def quadratic_kappa(truth: np.ndarray, called: np.ndarray, classes: int) -> float | None:
    """Cohen's kappa with quadratic weights over ordered classes (``None`` if undefined)."""
    if len(truth) == 0:
        return None
    if len(set(truth.tolist()) | set(called.tolist())) == 1:
        return 1.0  # perfect agreement on one class: kappa's 0/0, read as agreement
    value = cohen_kappa_score(truth, called, labels=list(range(classes)), weights="quadratic")
    return float(value)
