"""Evaluation report: ROC, calibration, confusion and example-patch figures plus metrics.json.

matplotlib is imported inside the functions so ``import slidescan`` stays fast. Figures are
rendered with an explicit Agg canvas instead of ``matplotlib.use("Agg")``/pyplot: that works
headless, never switches (and so never closes the figures of) a backend the caller already
chose, and leaves no figures registered in pyplot to leak memory in long runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from slidescan.train.metrics import BinaryMetrics, reliability_bins, roc_curve


class Images(Protocol):
    """N×H×W×3 uint8 images: an array or any lazy indexable (only the shown ones are read)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray: ...


if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

FOOTER = "slidescan — research use only"
DPI = 120
EXAMPLE_ROWS, EXAMPLE_COLS = 4, 6
_ERROR_RED = "#d62728"
TITLE_SIZE = 11
# Figure margins in inches: space above the title, at each side of it, and the footer strip.
_TOP_PAD, _SIDE_PAD, _FOOTER_H = 0.1, 0.12, 0.25


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _wrap(fig: Figure, text: str, width_in: float, fontsize: float, weight: str = "normal") -> str:
    """``text`` broken into lines at most ``width_in`` wide: at spaces where possible, else
    after a '/' or anywhere, because a dataset title holds long paths without spaces."""
    from matplotlib.font_manager import FontProperties

    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    prop = FontProperties(size=fontsize, weight=weight)
    limit = width_in * fig.dpi

    def fits(s: str) -> bool:
        return bool(renderer.get_text_width_height_descent(s, prop, ismath=False)[0] <= limit)

    lines = []
    for paragraph in text.split("\n"):
        # (separator, piece) pairs: the pieces of one over-long word join without a space.
        tokens: list[tuple[str, str]] = []
        for word in paragraph.split():
            tokens += [(" " if i == 0 else "", piece) for i, piece in enumerate(_split(word, fits))]
        line = ""
        for sep, piece in tokens:
            if line and not fits(line + sep + piece):
                lines.append(line)
                line = piece
            else:
                line = line + sep + piece if line else piece
        lines.append(line)
    return "\n".join(lines)


def _split(word: str, fits: Callable[[str], bool]) -> list[str]:
    """``word`` as pieces that each fit: whole, else cut after slashes, else between characters."""
    if fits(word):
        return [word]
    parts = [s + "/" for s in word.split("/")[:-1]] + [word.split("/")[-1]]
    pieces: list[str] = []
    for part in filter(None, parts):
        if pieces and fits(pieces[-1] + part):
            pieces[-1] += part
            continue
        while part:  # a part wider than the line on its own: cut it anywhere
            n = len(part)
            while n > 1 and not fits(part[:n]):
                n -= 1
            pieces.append(part[:n])
            part = part[n:]
    return pieces


def _height_in(fig: Figure, text: Text) -> float:
    """Drawn height of ``text`` in inches."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    return float(text.get_window_extent(renderer).height) / fig.dpi


def _add_title(fig: Figure, title: str) -> Text | None:
    """The figure title, wrapped to the figure's width; place it with :func:`_pin_title`."""
    if not title:
        return None
    width = fig.get_size_inches()[0] - 2 * _SIDE_PAD
    return fig.suptitle(_wrap(fig, title, width, TITLE_SIZE), fontsize=TITLE_SIZE, va="top")


def _pin_title(fig: Figure, text: Text | None) -> None:
    """Put the title ``_TOP_PAD`` below the top edge and the footer in the bottom strip, for the
    figure's final size (both are placed in figure fractions, which a resize moves)."""
    height = fig.get_size_inches()[1]
    if text is not None:
        text.set_y(1 - _TOP_PAD / height)
    fig.text(0.995, 0.05 / height, FOOTER, ha="right", va="bottom", fontsize=7, color="0.45")


def _finish(fig: Figure, title: str) -> Figure:
    """Add the title and footer, grow the figure by the title's height (so a long, wrapped
    title takes no room from the plot), and lay it out below the title."""
    text = _add_title(fig, title)
    width, height = fig.get_size_inches()
    title_h = _height_in(fig, text) + _TOP_PAD if text is not None else 0.0
    if text is not None:
        # Laid out by the rect below instead: tight_layout would not count the top padding.
        text.set_in_layout(False)
        fig.set_size_inches(width, height + title_h)
        height += title_h
    _pin_title(fig, text)
    rect = (0, _FOOTER_H / height, 1, 1 - title_h / height)
    # Twice: an equal-aspect Axes (ROC) is measured where the first pass found it, which
    # the first pass moves, so its title could end up above the rect.
    fig.tight_layout(rect=rect)
    fig.tight_layout(rect=rect)
    return fig


def roc_figure(labels: np.ndarray, probs: np.ndarray, m: BinaryMetrics, title: str) -> Figure:
    """ROC curve with the AUC, its CI and the operating point at the threshold."""
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
    return _finish(fig, title)


def calibration_figure(
    labels: np.ndarray, probs: np.ndarray, m: BinaryMetrics, title: str
) -> Figure:
    """Reliability diagram over a histogram of the probabilities of each label."""
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
    return _finish(fig, title)


def confusion_figure(m: BinaryMetrics, title: str) -> Figure:
    """Confusion matrix at the threshold: counts and each label's rates."""
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
    return _finish(fig, title)


def _spread(order: np.ndarray, k: int) -> np.ndarray:
    """``k`` items evenly spaced along ``order`` (all of it when shorter)."""
    if order.size <= k:
        return order
    return order[np.linspace(0, order.size - 1, k).round().astype(int)]


@dataclass(frozen=True)
class Outcome:
    """One row group of the example grid: every case with this outcome, and those shown."""

    name: str
    label: int
    called_positive: bool
    cases: np.ndarray
    shown: np.ndarray

    @property
    def is_error(self) -> bool:
        """Whether these cases are misclassified."""
        return self.called_positive != (self.label == 1)

    def heading(self, threshold: float) -> str:
        """E.g. 'False negatives: 15 (label 1, p < 0.50); 6 shown, most confident'."""
        rule = f"label {self.label}, p {'≥' if self.called_positive else '<'} {threshold:.2f}"
        if self.cases.size == 0:
            return f"{self.name}: none ({rule})"
        text = f"{self.name}: {self.cases.size} ({rule})"
        if self.shown.size < self.cases.size:
            which = "most confident" if self.is_error else "spread over p"
            text += f"; {self.shown.size} shown, {which}"
        return text


def example_outcomes(
    labels: np.ndarray, probs: np.ndarray, threshold: float, k: int = 24
) -> list[Outcome]:
    """False negatives, false positives, true positives and true negatives, with up to ``k``
    cases shown in all: errors most confident first, then hits.

    Each outcome gets an equal share; a share that its outcome cannot fill goes to the others
    in that order. Correct cases are spread over their confidence range rather than all being
    the easiest ones.
    """
    pred = probs >= threshold
    # Confident-first orderings: an FN is worse the lower its prob, an FP the higher.
    kinds = [
        ("False negatives", 1, False, 1),
        ("False positives", 0, True, -1),
        ("True positives", 1, True, -1),
        ("True negatives", 0, False, 1),
    ]
    groups = []
    for _, label, positive, sign in kinds:
        cases = np.flatnonzero((labels == label) & (pred == positive))
        groups.append(cases[np.argsort(sign * probs[cases], kind="stable")])

    quota = [0] * 4
    left = min(k, labels.size)
    while left > 0:  # round-robin so unfillable shares flow to outcomes that have cases
        for g in range(4):
            if left > 0 and quota[g] < groups[g].size:
                quota[g] += 1
                left -= 1
    outcomes = []
    for (name, label, positive, _), cases, q in zip(kinds, groups, quota, strict=True):
        shown = cases[:q] if positive != (label == 1) else _spread(cases, q)
        outcomes.append(Outcome(name, label, positive, cases, shown))
    return outcomes


# Example grid geometry, in inches: column pitch, image side, the p caption above each image,
# the space between rows, the minimum width of the image area (so headings stay one line).
_CELL, _IMAGE, _CAPTION, _ROW_GAP, _MIN_WIDTH = 1.75, 1.5, 0.24, 0.1, 5.0
_HEADING_SIZE = 10


def examples_figure(
    labels: np.ndarray, probs: np.ndarray, images: Images, m: BinaryMetrics, title: str
) -> Figure:
    """Example patches in one row group per outcome, each under a heading with its count."""
    outcomes = example_outcomes(labels, probs, m.threshold, EXAMPLE_ROWS * EXAMPLE_COLS)
    cols = max(1, min(EXAMPLE_COLS, max(o.shown.size for o in outcomes)))
    width = max(cols * _CELL, _MIN_WIDTH) + 2 * _SIDE_PAD
    fig = _new_figure((width, 10.0))  # the height is known only once the texts are measured
    heading = f"Examples at threshold {m.threshold:.2f} (red frame = misclassified)"
    title_text = _add_title(fig, f"{title}\n{heading}" if title else heading)

    # Lay out top-down in inches, then convert to figure fractions once the height is known.
    y = _TOP_PAD + (_height_in(fig, title_text) if title_text is not None else 0) + 0.15
    inset = _SIDE_PAD + (_CELL - _IMAGE) / 2  # headings line up with the first image
    placed: list[tuple[Text, float]] = []
    cells: list[tuple[int, float, float]] = []  # case, left, top
    for outcome in outcomes:
        wrapped = _wrap(fig, outcome.heading(m.threshold), width - 2 * inset, _HEADING_SIZE, "bold")
        color = _ERROR_RED if outcome.is_error and outcome.cases.size else "black"
        text = fig.text(
            inset / width, 0, wrapped, fontsize=_HEADING_SIZE, weight="bold", va="top",
            color=color,
        )  # fmt: skip
        placed.append((text, y))
        y += _height_in(fig, text) + 0.04
        for n, case in enumerate(outcome.shown):
            row, col = divmod(n, cols)
            cells.append((int(case), inset + col * _CELL, y + row * (_CAPTION + _IMAGE + _ROW_GAP)))
        rows = math.ceil(outcome.shown.size / cols)
        y += rows * (_CAPTION + _IMAGE + _ROW_GAP) + 0.12
    height = y + _FOOTER_H
    fig.set_size_inches(width, height)
    for text, top in placed:
        text.set_y(1 - top / height)
    for case, left, top in cells:
        bottom = top + _CAPTION + _IMAGE
        ax = fig.add_axes((left / width, 1 - bottom / height, _IMAGE / width, _IMAGE / height))
        ax.imshow(images[case], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = (probs[case] >= m.threshold) != (labels[case] == 1)
        for spine in ax.spines.values():
            spine.set_color(_ERROR_RED if wrong else "0.8")
            spine.set_linewidth(3.5 if wrong else 0.8)
        ax.set_title(f"p = {probs[case]:.2f}", fontsize=8, pad=3,
                     color=_ERROR_RED if wrong else "black")  # fmt: skip
    _pin_title(fig, title_text)
    return fig


def report_figures(
    labels: np.ndarray,
    probs: np.ndarray,
    metrics: BinaryMetrics,
    images: Images | None = None,
    title: str = "",
) -> dict[str, Figure]:
    """The report's figures by file name, laid out and ready to save (see :func:`write_report`)."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be equal 1-D")
    if metrics.n != labels.size:
        raise ValueError(f"metrics cover {metrics.n} cases but {labels.size} were given")
    if images is not None and len(images) != labels.size:
        raise ValueError(f"{len(images)} images given for {labels.size} cases")
    figures = {
        "roc.png": roc_figure(labels, probs, metrics, title),
        "calibration.png": calibration_figure(labels, probs, metrics, title),
        "confusion.png": confusion_figure(metrics, title),
    }
    if images is not None:
        figures["examples.png"] = examples_figure(labels, probs, images, metrics, title)
    return figures


def write_report(
    out_dir: Path,
    labels: np.ndarray,
    probs: np.ndarray,
    metrics: BinaryMetrics,
    images: Images | None = None,
    title: str = "",
    summary: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write roc.png, calibration.png, confusion.png, examples.png (when ``images`` is given)
    and metrics.json into ``out_dir``; return the written paths.

    ``images`` is N×H×W×3 uint8 (an array, or any lazy sequence: only the ~24 shown are
    indexed), aligned with ``labels``/``probs``; ``metrics`` should come
    from :func:`slidescan.train.metrics.binary_metrics` on the same cases. metrics.json holds
    ``summary`` (the metrics with their provenance, e.g.
    :meth:`slidescan.train.evaluation.Evaluation.summary`), by default ``metrics`` alone.
    """
    figures = report_figures(labels, probs, metrics, images, title)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=DPI, facecolor="white")
        written.append(out_dir / name)
    json_path = out_dir / "metrics.json"
    content = dict(summary) if summary is not None else metrics.to_dict()
    json_path.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")
    written.append(json_path)
    return written
