"""Binary classification metrics for patch/slide predictions (numpy and scikit-learn, no torch).

Everything works on a label array of 0/1 and an array of positive-class probabilities. AUC, the
ROC curve, the confusion counts, log loss and the Brier score are scikit-learn's; what it lacks
is here: the bootstrap AUC CI (vectorised: all resamples in a few ``bincount`` calls), the
expected calibration error and the accuracy-maximising threshold.
Undefined quantities (AUC with one class, sensitivity without positives, ...) are ``nan``
rather than exceptions, so a metrics run on a small or skewed split never crashes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

_EPS = 1e-7
# Bootstrap work is chunked so one chunk's (resamples x cases) index matrix stays ~16 MB
# even for the 32k-patch PCam test split.
_BOOTSTRAP_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class BinaryMetrics:
    """Summary of binary predictions at one decision threshold."""

    n: int
    n_positive: int
    threshold: float
    auc: float
    auc_ci: tuple[float, float]  # bootstrap 95% percentile CI
    accuracy: float
    sensitivity: float
    specificity: float
    f1: float
    nll: float  # mean binary cross-entropy, probs clipped to [1e-7, 1 - 1e-7]
    brier: float
    ece: float  # 15 equal-width bins on the positive-class probability
    tp: int
    fp: int
    tn: int
    fn: int

    def to_dict(self) -> dict:
        """Plain dict for ``json.dump``; ``nan`` becomes ``None`` (strict JSON has no NaN)."""
        out: dict = {}
        for key, value in asdict(self).items():
            if isinstance(value, tuple):
                out[key] = [_json_float(v) for v in value]
            elif isinstance(value, float):
                out[key] = _json_float(value)
            else:
                out[key] = int(value)
        return out


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _check_inputs(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (int64 labels, float64 probs), both 1-D and equally long."""
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels and probs must be 1-D, got shapes {y.shape} and {p.shape}")
    if y.shape != p.shape:
        raise ValueError(f"labels and probs differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must contain only 0 and 1")
    if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError("probs must be finite and within [0, 1]")
    return y.astype(np.int64), p


def _group_counts(
    labels: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Collapse tied scores: (sorted unique scores, group id per case, positives, negatives)."""
    uniq, group = np.unique(probs, return_inverse=True)
    pos = np.bincount(group, weights=labels, minlength=uniq.size)
    neg = np.bincount(group, weights=1 - labels, minlength=uniq.size)
    return uniq, group, pos, neg


def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row of (rows x score-groups) counts, groups in ascending score order.

    Each positive scores 1 per negative strictly below it and 1/2 per tied negative, which is
    exactly the trapezoidal ROC area. Rows with only one class give ``nan``.
    """
    neg_below = np.cumsum(neg, axis=1) - neg
    u = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    n_pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pairs > 0, u / np.where(n_pairs > 0, n_pairs, 1.0), np.nan)


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Area under the ROC curve (ties count 1/2); ``nan`` when only one class is present."""
    y, p = _check_inputs(labels, probs)
    if np.unique(y).size < 2:
        return float("nan")
    return float(skm.roc_auc_score(y, p))


def _bootstrap_auc(
    labels: np.ndarray, probs: np.ndarray, n_bootstrap: int, seed: int
) -> np.ndarray:
    """AUCs of ``n_bootstrap`` case resamples; single-class resamples are dropped."""
    n = labels.size
    uniq, group, _, _ = _group_counts(labels, probs)
    n_groups = uniq.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // max(n, n_groups))
    aucs = []
    for start in range(0, n_bootstrap, chunk):
        rows = min(chunk, n_bootstrap - start)
        idx = rng.integers(0, n, size=(rows, n))
        # One bincount per class over (row, group) pairs gives all resamples' group counts.
        flat = (np.arange(rows)[:, None] * n_groups + group[idx]).ravel()
        is_pos = labels[idx].ravel().astype(np.float64)
        size = rows * n_groups
        pos = np.bincount(flat, weights=is_pos, minlength=size).reshape(rows, n_groups)
        neg = np.bincount(flat, weights=1.0 - is_pos, minlength=size).reshape(rows, n_groups)
        aucs.append(_auc_from_counts(pos, neg))
    if not aucs:
        return np.empty(0)
    out = np.concatenate(aucs)
    return out[~np.isnan(out)]


def auc_with_ci(
    labels: np.ndarray, scores: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """ROC AUC and its bootstrap 95% percentile CI (``nan`` where undefined)."""
    y, p = _check_inputs(labels, scores)
    auc = roc_auc(y, p) if y.size else float("nan")
    ci = (float("nan"), float("nan"))
    if not math.isnan(auc):
        boot = _bootstrap_auc(y, p, n_bootstrap, seed)
        if boot.size:
            lo, hi = np.percentile(boot, [2.5, 97.5])
            ci = (float(lo), float(hi))
    return auc, ci


def roc_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` from (0, 0) to (1, 1), one per distinct probability.

    Point ``i`` is the rate pair for ``prob >= thresholds[i]``; the first threshold is ``inf``.
    Rates are ``nan`` for a class that is absent.
    """
    y, p = _check_inputs(labels, probs)
    with warnings.catch_warnings():  # one class: scikit-learn warns and gives nan rates
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = skm.roc_curve(y, p, drop_intermediate=False)
    return fpr, tpr, thresholds


def reliability_bins(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin ``(count, mean prob, fraction positive)`` over equal-width bins on [0, 1].

    Bins are half-open ``[lo, hi)`` except the last, which includes 1. Empty bins give ``nan``.
    """
    y, p = _check_inputs(labels, probs)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, sum_p / count, sum_y / count


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the positive-class probability.

    ECE = sum over non-empty :func:`reliability_bins` of (fraction of cases in the bin) *
    |fraction positive - mean prob|. This is the reliability-diagram form for binary outputs,
    not the top-label ("confidence") variant.
    """
    count, mean_p, frac_pos = reliability_bins(labels, probs, n_bins)
    if count.sum() == 0:
        return float("nan")
    filled = count > 0
    gaps = np.abs(frac_pos[filled] - mean_p[filled])
    return float(np.sum(count[filled] * gaps) / count.sum())


def best_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """Threshold ``t`` maximising accuracy of ``prob >= t`` on these cases.

    Accuracy is the right target only for (roughly) balanced data such as PCam; on skewed data
    it favours the majority class. Candidates sit midway between consecutive distinct
    probabilities (so they generalise rather than hugging one case), plus 0.0 (all positive) and
    just above the largest probability (all negative). Ties go to the candidate nearest 0.5.
    """
    y, p = _check_inputs(labels, probs)
    if y.size == 0:
        raise ValueError("best_threshold needs at least one case")
    uniq, _, pos, neg = _group_counts(y, p)
    # Candidate i predicts positive exactly for groups i..end (i = len(uniq): nothing positive).
    tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
    fp = np.concatenate([np.cumsum(neg[::-1])[::-1], [0.0]])
    accuracy = (tp + (neg.sum() - fp)) / y.size
    mid = (uniq[:-1] + uniq[1:]) / 2
    # Adjacent floats can round the midpoint down onto the lower value; fall back to the upper.
    mid = np.where(mid > uniq[:-1], mid, uniq[1:])
    candidates = np.concatenate([[0.0], mid, [np.nextafter(uniq[-1], np.inf)]])
    best = np.flatnonzero(accuracy >= accuracy.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def binary_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float = 0.5,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> BinaryMetrics:
    """All metrics at ``threshold`` (positive when ``prob >= threshold``) plus a bootstrap AUC CI.

    The CI is the 2.5/97.5 percentile of AUC over ``n_bootstrap`` case resamples (resamples
    with a single class are skipped); it is ``(nan, nan)`` when AUC itself is undefined.
    """
    y, p = _check_inputs(labels, probs)
    if y.size == 0:
        raise ValueError("binary_metrics needs at least one case")
    if n_bootstrap < 0:
        raise ValueError("n_bootstrap must be >= 0")
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    auc, ci = auc_with_ci(y, p, n_bootstrap=n_bootstrap, seed=seed)
    pc = np.clip(p, _EPS, 1 - _EPS)  # the same clip on every scikit-learn version
    return BinaryMetrics(
        n=int(y.size),
        n_positive=tp + fn,
        threshold=float(threshold),
        auc=auc,
        auc_ci=ci,
        accuracy=(tp + tn) / y.size,
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        nll=float(skm.log_loss(y, pc, labels=[0, 1])),
        brier=float(skm.brier_score_loss(y, p, pos_label=1)),
        ece=expected_calibration_error(y, p, 15),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_metrics(m: BinaryMetrics) -> str:
    """Multi-line, human-readable table of a :class:`BinaryMetrics`."""
    rows = [
        ("cases", f"{m.n}"),
        ("positives", f"{m.n_positive} ({_fmt(_ratio(m.n_positive, m.n) * 100, 1)}%)"),
        ("AUC [95% CI]", f"{_fmt(m.auc)} [{_fmt(m.auc_ci[0])}, {_fmt(m.auc_ci[1])}]"),
        ("accuracy", _fmt(m.accuracy)),
        ("sensitivity", _fmt(m.sensitivity)),
        ("specificity", _fmt(m.specificity)),
        ("F1", _fmt(m.f1)),
        ("NLL", _fmt(m.nll)),
        ("Brier", _fmt(m.brier)),
        ("ECE (15 bins)", _fmt(m.ece)),
        ("tile threshold", f"{m.threshold:.3g} (a patch is tumour when p ≥ it)"),
        ("confusion", f"TP {m.tp}  FP {m.fp}  TN {m.tn}  FN {m.fn}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
