"""Metrics against hand-computed values on tiny arrays, and against scikit-learn on random data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from slidescan.train.metrics import (
    BinaryMetrics,
    best_threshold,
    binary_metrics,
    expected_calibration_error,
    format_metrics,
    reliability_bins,
    roc_auc,
    roc_curve,
)

LABELS = np.array([0, 0, 1, 1])
PROBS = np.array([0.1, 0.4, 0.35, 0.8])


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative-but-imperfect probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    return y, p


def test_hand_computed_tiny_case() -> None:
    m = binary_metrics(LABELS, PROBS, n_bootstrap=200)
    # 3 of the 4 (positive, negative) pairs are ordered correctly: 0.35 < 0.4 is the miss.
    assert m.auc == pytest.approx(0.75)
    assert (m.tp, m.fp, m.tn, m.fn) == (1, 0, 2, 1)
    assert m.accuracy == pytest.approx(0.75)
    assert m.sensitivity == pytest.approx(0.5)
    assert m.specificity == pytest.approx(1.0)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.brier == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    nll = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert m.nll == pytest.approx(nll)
    # 15 bins put every case in its own bin, so ECE is the mean |label - prob|.
    assert m.ece == pytest.approx((0.1 + 0.4 + 0.65 + 0.2) / 4)
    assert (m.n, m.n_positive, m.threshold) == (4, 2, 0.5)


def test_ece_two_bins_by_hand() -> None:
    # [0, 0.5): probs .1 .4 .35, labels 0 0 1 -> |1/3 - 0.85/3| = 0.05, weight 3/4.
    # [0.5, 1]: prob .8, label 1 -> 0.2, weight 1/4.
    assert expected_calibration_error(LABELS, PROBS, n_bins=2) == pytest.approx(
        0.75 * 0.05 + 0.25 * 0.2
    )


def test_ece_bin_edges_and_perfect_calibration() -> None:
    # 1.0 belongs to the last bin, 0.5 to the upper of two bins.
    count, mean_p, frac = reliability_bins(np.array([1, 0, 1]), np.array([1.0, 0.0, 0.5]), 2)
    assert count.tolist() == [1, 2]
    assert mean_p.tolist() == [0.0, 0.75]
    assert frac.tolist() == [0.0, 1.0]
    y = np.array([0, 1, 0, 1, 1, 1])
    p = np.array([0.5, 0.5, 0.5, 0.5, 1.0, 1.0])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.0)


def test_nll_clips_hard_mistakes() -> None:
    m = binary_metrics(np.array([1, 0]), np.array([0.0, 1.0]), n_bootstrap=0)
    assert m.nll == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_threshold_is_inclusive() -> None:
    m = binary_metrics(LABELS, PROBS, threshold=0.35, n_bootstrap=0)
    assert (m.tp, m.fp, m.tn, m.fn) == (2, 1, 1, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed: int) -> None:
    y, p = _noisy(500, seed)
    p = np.round(p, 2)  # force many ties, which must count 1/2
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_roc_curve_area_equals_auc() -> None:
    y, p = _noisy(300, 3)
    fpr, tpr, thr = roc_curve(y, np.round(p, 2))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.isinf(thr[0]) and np.all(np.diff(thr[1:]) < 0)
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert area == pytest.approx(roc_auc(y, np.round(p, 2)))


def test_ci_contains_estimate_and_narrows_with_n() -> None:
    small = binary_metrics(*_noisy(60, 4), n_bootstrap=300)
    large = binary_metrics(*_noisy(3000, 4), n_bootstrap=300)
    for m in (small, large):
        assert m.auc_ci[0] <= m.auc <= m.auc_ci[1]
    width_small = small.auc_ci[1] - small.auc_ci[0]
    width_large = large.auc_ci[1] - large.auc_ci[0]
    assert width_large < width_small / 3  # ~1/sqrt(50) in theory


def test_bootstrap_matches_naive_loop_and_is_seeded() -> None:
    y, p = _noisy(40, 5)
    m = binary_metrics(y, p, n_bootstrap=200, seed=7)
    # Same draws as the implementation (one chunk at this size), one resample at a time.
    idx = np.random.default_rng(7).integers(0, 40, size=(200, 40))
    aucs = [roc_auc(y[i], p[i]) for i in idx]
    aucs = [a for a in aucs if not math.isnan(a)]
    assert m.auc_ci == pytest.approx(tuple(np.percentile(aucs, [2.5, 97.5])))
    assert binary_metrics(y, p, n_bootstrap=200, seed=7).auc_ci == m.auc_ci
    assert binary_metrics(y, p, n_bootstrap=200, seed=8).auc_ci != m.auc_ci


def test_bootstrap_skips_single_class_resamples() -> None:
    # With one positive in 5 cases about a third of resamples lack it; the CI must stay finite.
    m = binary_metrics(np.array([0, 0, 0, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4, 0.9]))
    assert m.auc == 1.0
    assert m.auc_ci == (1.0, 1.0)


def test_one_class_input_does_not_crash() -> None:
    m = binary_metrics(np.zeros(6, dtype=int), np.linspace(0.0, 1.0, 6))
    assert math.isnan(m.auc) and all(math.isnan(v) for v in m.auc_ci)
    assert math.isnan(m.sensitivity)
    assert m.specificity == pytest.approx(0.5)
    assert math.isnan(roc_auc(np.ones(3, dtype=int), np.array([0.2, 0.5, 0.9])))
    d = m.to_dict()
    assert d["auc"] is None and d["auc_ci"] == [None, None]
    json.dumps(d, allow_nan=False)  # strict JSON
    assert "n/a" in format_metrics(m)


def test_to_dict_round_trips_through_json() -> None:
    m = binary_metrics(LABELS, PROBS, n_bootstrap=50)
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert d["auc_ci"] == list(m.auc_ci)
    assert BinaryMetrics(**{**d, "auc_ci": tuple(d["auc_ci"])}) == m
    assert isinstance(d["tp"], int) and isinstance(d["auc"], float)


def test_format_metrics_lists_everything() -> None:
    text = format_metrics(binary_metrics(LABELS, PROBS, n_bootstrap=50))
    for word in ("cases", "positives", "AUC", "accuracy", "sensitivity", "specificity", "F1"):
        assert word in text
    for word in ("NLL", "Brier", "ECE", "threshold", "TP 1", "FP 0", "TN 2", "FN 1"):
        assert word in text
    assert "0.7500" in text and len(text.splitlines()) >= 10


def test_best_threshold_separable() -> None:
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    t = best_threshold(y, p)
    assert t == pytest.approx(0.5)  # midway between 0.3 and 0.7
    assert binary_metrics(y, p, t, n_bootstrap=0).accuracy == 1.0


def test_best_threshold_edges_and_ties() -> None:
    # Tiny example: 0.225 and 0.6 both reach 0.75 accuracy; the one nearer 0.5 wins.
    assert best_threshold(LABELS, PROBS) == pytest.approx(0.6)
    # All negative: the threshold must sit above every probability, even 1.0.
    p = np.array([0.2, 1.0])
    assert not np.any(p >= best_threshold(np.zeros(2, dtype=int), p))
    # All positive: every probability, even 0.0, must clear it.
    p = np.array([0.0, 0.3])
    assert np.all(p >= best_threshold(np.ones(2, dtype=int), p))


def test_best_threshold_beats_default_on_shifted_scores() -> None:
    y, p = _noisy(400, 6)
    p = p**3  # same ranking, miscalibrated downwards
    t = best_threshold(y, p)
    best = binary_metrics(y, p, t, n_bootstrap=0).accuracy
    grid = [binary_metrics(y, p, g, n_bootstrap=0).accuracy for g in np.linspace(0, 1, 101)]
    assert best >= max(grid) - 1e-12
    assert best > binary_metrics(y, p, 0.5, n_bootstrap=0).accuracy


@pytest.mark.parametrize(
    ("labels", "probs"),
    [
        (np.array([0, 1]), np.array([0.5])),
        (np.array([0, 2]), np.array([0.5, 0.5])),
        (np.array([0, 1]), np.array([0.5, 1.5])),
        (np.array([0, 1]), np.array([0.5, np.nan])),
        (np.array([[0, 1]]), np.array([[0.5, 0.5]])),
    ],
)
def test_bad_input_raises(labels: np.ndarray, probs: np.ndarray) -> None:
    with pytest.raises(ValueError):
        binary_metrics(labels, probs)


def test_empty_input() -> None:
    with pytest.raises(ValueError):
        binary_metrics(np.array([], dtype=int), np.array([]))
    assert math.isnan(roc_auc(np.array([], dtype=int), np.array([])))
