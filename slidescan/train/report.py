"""Evaluation report: ROC, calibration, confusion and example-patch figures plus metrics.json.

matplotlib is imported inside the functions so ``import slidescan`` stays fast. Figures are
rendered with an explicit Agg canvas instead of ``matplotlib.use("Agg")``/pyplot: that works
headless, never switches (and so never closes the figures of) a backend the caller already
chose, and leaves no figures registered in pyplot to leak memory in long runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from slidescan.train.metrics import BinaryMetrics, reliability_bins, roc_curve


class Images(Protocol):
    """N×H×W×3 uint8 images: an array or any lazy indexable (only the shown ones are read)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray: ...


if TYPE_CHECKING:
    from matplotlib.figure import Figure

FOOTER = "slidescan — research use only"
DPI = 120
EXAMPLE_ROWS, EXAMPLE_COLS = 4, 6
_ERROR_RED = "#d62728"


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, title: str) -> Path:
    """Add title and footer, lay out, and write a PNG."""
    if title:
        fig.suptitle(title, fontsize=11)
    fig.text(0.995, 0.005, FOOTER, ha="right", va="bottom", fontsize=7, color="0.45")
    # Leave a strip at the bottom so the footer never overlaps axis labels.
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _plot_roc(
    path: Path, labels: np.ndarray, probs: np.ndarray, m: BinaryMetrics, title: str
) -> Path:
    fig = _new_figure((5.2, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    if math.isnan(m.auc):
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center", va="center")
    else:
        fpr, tpr, _ = roc_curve(labels, probs)
        ci = f" [{m.auc_ci[0]:.3f}, {m.auc_ci[1]:.3f}]" if not math.isnan(m.auc_ci[0]) else ""
        ax.plot(fpr, tpr, lw=2, color="C0", label=f"AUC {m.auc:.3f}{ci}")
        # The operating point is recomputed from the plotted data so it lies on the curve.
        pred = probs >= m.threshold
        op_tpr = np.mean(pred[labels == 1])
        op_fpr = np.mean(pred[labels == 0])
        ax.plot(
            [op_fpr],
            [op_tpr],
            "o",
            ms=8,
            color="C3",
            label=f"threshold {m.threshold:.2f} (sens {op_tpr:.2f}, spec {1 - op_fpr:.2f})",
        )
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(f"ROC (n={m.n}, positives={m.n_positive})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, title)


def _plot_calibration(
    path: Path, labels: np.ndarray, probs: np.ndarray, m: BinaryMetrics, title: str
) -> Path:
    n_bins = 15
    count, mean_p, frac_pos = reliability_bins(labels, probs, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    filled = count > 0

    fig = _new_figure((5.2, 6.2))
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(grid[0])
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="perfect calibration")
    ax.bar(
        centers[filled],
        frac_pos[filled],
        width=1 / n_bins,
        edgecolor="white",
        color="C0",
        alpha=0.8,
        label="fraction positive",
    )
    ax.plot(
        mean_p[filled], frac_pos[filled], "o-", ms=4, color="C1", label="observed at bin mean prob"
    )
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.set_ylabel("Observed fraction positive")
    ax.set_title(f"Reliability (ECE {m.ece:.3f}, Brier {m.brier:.3f})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)

    hist = fig.add_subplot(grid[1], sharex=ax)
    hist.hist(
        [probs[labels == 0], probs[labels == 1]],
        bins=edges.tolist(),
        stacked=True,
        color=["C2", "C3"],
        label=["label 0", "label 1"],
    )
    hist.set_xlabel("Predicted probability of tumour (label 1)")
    hist.set_ylabel("Cases")
    hist.legend(loc="upper center", fontsize=8, ncol=2)
    return _save(fig, path, title)


def _plot_confusion(path: Path, m: BinaryMetrics, title: str) -> Path:
    counts = np.array([[m.tn, m.fp], [m.fn, m.tp]])
    row_total = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, row_total, out=np.zeros((2, 2)), where=row_total > 0)
    names = np.array([["TN", "FP"], ["FN", "TP"]])

    fig = _new_figure((4.8, 4.3))
    ax = fig.add_subplot()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{names[i, j]}\n{counts[i, j]}\n{rates[i, j]:.1%} of label {i}",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_xticks([0, 1], ["predicted 0", "predicted 1"])
    ax.set_yticks([0, 1], ["label 0", "label 1"])
    ax.set_title(f"Confusion at threshold {m.threshold:.2f} (acc {m.accuracy:.3f})", fontsize=10)
    return _save(fig, path, title)


def _spread(order: np.ndarray, k: int) -> np.ndarray:
    """``k`` items evenly spaced along ``order`` (all of it when shorter)."""
    if order.size <= k:
        return order
    return order[np.linspace(0, order.size - 1, k).round().astype(int)]


def select_examples(
    labels: np.ndarray, probs: np.ndarray, threshold: float, k: int = 24
) -> np.ndarray:
    """Indices of up to ``k`` cases to show: errors first (most confident first), then hits.

    Each outcome (FN, FP, TP, TN) gets an equal share; a share that its outcome cannot fill
    goes to the others in that order. Correct cases are spread over their confidence range
    rather than all being the easiest ones.
    """
    pred = probs >= threshold
    # Confident-first orderings: an FN is worse the lower its prob, an FP the higher.
    groups = [
        np.flatnonzero((labels == 1) & ~pred),  # FN
        np.flatnonzero((labels == 0) & pred),  # FP
        np.flatnonzero((labels == 1) & pred),  # TP
        np.flatnonzero((labels == 0) & ~pred),  # TN
    ]
    groups[0] = groups[0][np.argsort(probs[groups[0]], kind="stable")]
    groups[1] = groups[1][np.argsort(-probs[groups[1]], kind="stable")]
    groups[2] = groups[2][np.argsort(-probs[groups[2]], kind="stable")]
    groups[3] = groups[3][np.argsort(probs[groups[3]], kind="stable")]

    quota = [0] * 4
    left = min(k, labels.size)
    while left > 0:  # round-robin so unfillable shares flow to outcomes that have cases
        for g in range(4):
            if left > 0 and quota[g] < groups[g].size:
                quota[g] += 1
                left -= 1
    picked = [groups[0][: quota[0]], groups[1][: quota[1]]]
    picked += [_spread(groups[2], quota[2]), _spread(groups[3], quota[3])]
    return np.concatenate(picked).astype(int)


def _plot_examples(
    path: Path,
    labels: np.ndarray,
    probs: np.ndarray,
    images: Images,
    m: BinaryMetrics,
    title: str,
) -> Path:
    chosen = select_examples(labels, probs, m.threshold, EXAMPLE_ROWS * EXAMPLE_COLS)
    cols = max(1, min(EXAMPLE_COLS, chosen.size))
    rows = max(1, math.ceil(chosen.size / cols))
    fig = _new_figure((1.75 * cols, 1.95 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, chosen, strict=False):  # more axes than picks on the last row
        ax.set_axis_on()
        ax.imshow(images[i], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = (probs[i] >= m.threshold) != (labels[i] == 1)
        for spine in ax.spines.values():
            spine.set_color(_ERROR_RED if wrong else "0.8")
            spine.set_linewidth(3.5 if wrong else 0.8)
        ax.set_title(
            f"label {labels[i]} · p={probs[i]:.2f}",
            fontsize=8,
            color=_ERROR_RED if wrong else "black",
        )
    heading = f"Examples (red frame = misclassified at threshold {m.threshold:.2f})"
    return _save(fig, path, f"{title}\n{heading}" if title else heading)


def write_report(
    out_dir: Path,
    labels: np.ndarray,
    probs: np.ndarray,
    metrics: BinaryMetrics,
    images: Images | None = None,
    title: str = "",
) -> list[Path]:
    """Write roc.png, calibration.png, confusion.png, examples.png (when ``images`` is given)
    and metrics.json into ``out_dir``; return the written paths.

    ``images`` is N×H×W×3 uint8 (an array, or any lazy sequence: only the ~24 shown are
    indexed), aligned with ``labels``/``probs``; ``metrics`` should come
    from :func:`slidescan.train.metrics.binary_metrics` on the same cases.
    """
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be equal 1-D")
    if metrics.n != labels.size:
        raise ValueError(f"metrics cover {metrics.n} cases but {labels.size} were given")
    if images is not None and len(images) != labels.size:
        raise ValueError(f"{len(images)} images given for {labels.size} cases")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_roc(out_dir / "roc.png", labels, probs, metrics, title),
        _plot_calibration(out_dir / "calibration.png", labels, probs, metrics, title),
        _plot_confusion(out_dir / "confusion.png", metrics, title),
    ]
    if images is not None:
        written.append(
            _plot_examples(out_dir / "examples.png", labels, probs, images, metrics, title)
        )
    json_path = out_dir / "metrics.json"
    json_path.write_text(json.dumps(metrics.to_dict(), indent=2, allow_nan=False) + "\n")
    written.append(json_path)
    return written
