"""pN staging by the Camelyon17 rules, patients with failed or unreliable slides, and the
slide-level metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from slidescan.batch.patients import NodeResult, stage_patients
from slidescan.batch.pn_stage import pn_stage
from slidescan.train.metrics import auc_with_ci
from slidescan.validate.slide_metrics import category_agreement, quadratic_kappa, wilson

NEG, ITC, MICRO, MACRO = "negative", "itc", "micrometastasis", "macrometastasis"


@pytest.mark.parametrize(
    ("nodes", "stage"),
    [
        ([NEG] * 5, "pN0"),
        ([], "pN0"),
        ([ITC, NEG, ITC], "pN0(i+)"),
        ([MICRO, ITC, NEG], "pN1mi"),
        ([MICRO] * 5, "pN1mi"),  # micrometastases only, however many nodes
        ([MACRO, NEG, NEG], "pN1"),
        ([MACRO, MICRO, MICRO, ITC], "pN1"),  # 3 nodes with metastases
        ([MACRO, MICRO, MICRO, MICRO, NEG], "pN2"),  # 4 nodes with metastases
        ([MACRO] * 9, "pN2"),
    ],
)
def test_pn_stage(nodes: list[str], stage: str) -> None:
    assert pn_stage(nodes) == stage


def test_unknown_category_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        pn_stage(["tumour"])


def test_patients_with_failed_or_unreliable_slides_are_staged_and_marked() -> None:
    patient_of = {"a1": "P1", "a2": "P1", "b1": "P2", "b2": "P2", "c1": "P3"}
    nodes = {
        "a1": NodeResult(MACRO), "a2": NodeResult(NEG),
        "b1": NodeResult(MICRO, reliable=False), "b2": NodeResult(None),  # b2 failed
        # c1 is not in this run at all
    }  # fmt: skip
    rows = {r["patient"]: r for r in stage_patients(patient_of, nodes)}
    assert rows["P1"]["stage"] == "pN1" and rows["P1"]["note"] == ""
    assert rows["P2"]["stage"] == "pN1mi" and rows["P2"]["failed"] == "b2"
    assert "INCOMPLETE" in str(rows["P2"]["note"]) and "UNRELIABLE" in str(rows["P2"]["note"])
    assert rows["P3"]["stage"] == "pN0" and "INCOMPLETE: 1 of 1" in str(rows["P3"]["note"])


def test_kappa_and_confusion_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    cats = [NEG, ITC, MICRO, MACRO]
    truth = [cats[i] for i in rng.integers(0, 4, 60)]
    called = [t if rng.random() < 0.7 else cats[rng.integers(0, 4)] for t in truth]
    result = category_agreement(truth, called)
    expected = cohen_kappa_score(truth, called, labels=cats, weights="quadratic")
    assert result["kappa"] == pytest.approx(expected)
    assert np.trace(np.array(result["matrix"])) == sum(
        t == c for t, c in zip(truth, called, strict=True)
    )
    assert quadratic_kappa(np.array([2, 2]), np.array([2, 2]), 5) == 1.0


def test_auc_matches_scikit_learn_and_wilson_matches_the_formula() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.clip(y * 0.3 + rng.random(80) * 0.7, 0, 1)
    auc, (lo, hi) = auc_with_ci(y, s, n_bootstrap=500)
    assert auc == pytest.approx(roc_auc_score(y, s))
    assert lo < auc < hi
    w = wilson(8, 10)  # worked: centre 0.7449, half-width 0.2267
    assert w["value"] == 0.8 and w["ci"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert wilson(0, 0)["value"] is None
