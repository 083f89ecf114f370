"""Report files: valid PNGs of sensible size, titles inside the figure, example-grid headings,
metrics.json round-trip, example selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.transforms import Bbox
from PIL import Image

from slidescan.train.metrics import binary_metrics
from slidescan.train.report import (
    example_outcomes,
    examples_figure,
    report_figures,
    write_report,
)

FIGURES = ("roc.png", "calibration.png", "confusion.png")
# What `slidescan evaluate` titles a report with on the real data: a long path, few spaces.
LONG_TITLE = (
    "pcamnet-v2 on PCam JPEG folders at /work/shared/data/pcam-jpeg/valid "
    "(32768 patches: 16399 tumour) (TTA)"
)


def select_examples(
    labels: np.ndarray, probs: np.ndarray, threshold: float, k: int = 24
) -> np.ndarray:
    """Indices of the cases the example grid shows, in its order."""
    outcomes = example_outcomes(labels, probs, threshold, k)
    return np.concatenate([o.shown for o in outcomes]).astype(int)


def _cases(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, imperfect probabilities and matching 96x96 RGB patches."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(2 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    images = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
    return y, p, images


def _assert_png(path: Path, min_side: int = 300) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_side and max(im.size) < 3000
        im.verify()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], dict]:
    y, p, images = _cases(60)
    m = binary_metrics(y, p, n_bootstrap=100)
    out = tmp_path_factory.mktemp("report") / "nested"  # must be created
    return out, write_report(out, y, p, m, images, title="test run"), m.to_dict()


def test_writes_all_files(report: tuple[Path, list[Path], dict]) -> None:
    out, written, _ = report
    names = [p.name for p in written]
    assert names == [*FIGURES, "examples.png", "metrics.json"]
    assert all(p.parent == out for p in written)
    for name in (*FIGURES, "examples.png"):
        _assert_png(out / name)


def test_metrics_json_round_trips(report: tuple[Path, list[Path], dict]) -> None:
    out, _, expected = report
    assert json.loads((out / "metrics.json").read_text()) == expected


def test_few_images_and_no_images(tmp_path: Path) -> None:
    y, p, images = _cases(7, seed=1)
    m = binary_metrics(y, p, n_bootstrap=20)
    written = write_report(tmp_path / "few", y, p, m, images)
    assert "examples.png" in [w.name for w in written]
    _assert_png(tmp_path / "few" / "examples.png", min_side=150)

    written = write_report(tmp_path / "none", y, p, m, images=None)
    assert [w.name for w in written] == [*FIGURES, "metrics.json"]
    assert not (tmp_path / "none" / "examples.png").exists()


def test_one_class_report_does_not_crash(tmp_path: Path) -> None:
    y = np.zeros(5, dtype=int)
    p = np.linspace(0.05, 0.95, 5)
    m = binary_metrics(y, p, n_bootstrap=10)
    write_report(tmp_path, y, p, m, np.zeros((5, 96, 96, 3), np.uint8))
    assert json.loads((tmp_path / "metrics.json").read_text())["auc"] is None
    _assert_png(tmp_path / "roc.png")


def test_keeps_callers_pyplot_backend(tmp_path: Path) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    fig = plt.figure()
    y, p, _ = _cases(20, seed=2)
    write_report(tmp_path, y, p, binary_metrics(y, p, n_bootstrap=0))
    # No switch_backend (which would close the caller's figures) and no figures left behind.
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == [fig.number]
    plt.close(fig)


def test_rejects_misaligned_inputs(tmp_path: Path) -> None:
    y, p, images = _cases(10)
    m = binary_metrics(y, p, n_bootstrap=0)
    with pytest.raises(ValueError):
        write_report(tmp_path, y, p, m, images[:5])
    with pytest.raises(ValueError):
        write_report(tmp_path, y[:8], p[:8], m)


def test_select_examples_puts_confident_errors_first() -> None:
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    p = np.array([0.3, 0.1, 0.6, 0.9, 0.8, 0.95, 0.2, 0.05])
    # FN by ascending prob, FP by descending prob, then hits.
    assert select_examples(y, p, 0.5, k=8).tolist() == [1, 0, 3, 2, 5, 4, 7, 6]
    assert select_examples(y, p, 0.5, k=4).tolist() == [1, 3, 5, 7]  # one of each outcome


def test_select_examples_fills_from_other_outcomes() -> None:
    y = np.array([0] * 20 + [1] * 20)
    p = np.where(y == 1, 0.9, 0.1)  # no errors at all
    chosen = select_examples(y, p, 0.5, k=24)
    assert chosen.size == 24 and len(set(chosen.tolist())) == 24
    assert (y[chosen] == 1).sum() == 12
    assert select_examples(y[:3], p[:3], 0.5, k=24).size == 3


def _squash(text: str) -> str:
    return "".join(text.split())


def _inside(box: Bbox, frame: Bbox) -> bool:
    """``box`` within ``frame``, to a pixel (text extents are measured in float pixels)."""
    return bool(
        box.x0 >= frame.x0 - 1 and box.y0 >= frame.y0 - 1
        and box.x1 <= frame.x1 + 1 and box.y1 <= frame.y1 + 1
    )  # fmt: skip


@pytest.mark.parametrize("title", [LONG_TITLE, "short", ""])
def test_titles_and_everything_else_lie_inside_the_figure(title: str) -> None:
    y, p, images = _cases(60)
    m = binary_metrics(y, p, n_bootstrap=20)
    figures = report_figures(y, p, m, images, title=title)
    assert list(figures) == [*FIGURES, "examples.png"]
    for name, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        titles = [t for t in fig.texts if _squash(t.get_text()).startswith(_squash(title))]
        assert titles, f"{name}: no title drawn"
        box = titles[0].get_window_extent(renderer)
        assert _inside(box, fig.bbox), f"{name}: title {box} outside the figure {fig.bbox}"
        # Nothing else may be cut either: axis labels, legends, headings, the footer.
        width, height = fig.get_size_inches()
        tight = fig.get_tightbbox(renderer)  # in inches
        assert _inside(Bbox.from_bounds(*(v * fig.dpi for v in tight.bounds)), fig.bbox), name
        for other in fig.texts:
            if other.get_text():
                assert _inside(other.get_window_extent(renderer), fig.bbox), other.get_text()


def test_title_is_wrapped_only_when_needed() -> None:
    y, p, _ = _cases(30)
    m = binary_metrics(y, p, n_bootstrap=0)
    short = report_figures(y, p, m, title="short title")["roc.png"]
    long = report_figures(y, p, m, title=LONG_TITLE)["roc.png"]
    assert any(t.get_text() == "short title" for t in short.texts)
    wrapped = next(t.get_text() for t in long.texts if t.get_text().startswith("pcamnet-v2"))
    assert "\n" in wrapped and _squash(wrapped) == _squash(LONG_TITLE)
    # The wrapped title makes the figure taller rather than squeezing the plot.
    assert long.get_size_inches()[1] > short.get_size_inches()[1]


def test_example_rows_have_headings_with_counts() -> None:
    y, p, images = _cases(80, seed=3)
    m = binary_metrics(y, p, n_bootstrap=0)
    outcomes = example_outcomes(y, p, m.threshold, k=24)
    assert [o.cases.size for o in outcomes] == [m.fn, m.fp, m.tp, m.tn]
    assert all(o.shown.size for o in outcomes), "the fixture should have every outcome"

    fig = examples_figure(y, p, images, m, title="test run")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = {t.get_text(): t for t in fig.texts}
    names = ("False negatives", "False positives", "True positives", "True negatives")
    headings = []
    for name, count in zip(names, (m.fn, m.fp, m.tp, m.tn), strict=True):
        found = [s for s in texts if s.startswith(f"{name}: {count} (")]
        assert len(found) == 1, (name, list(texts))
        headings.append(texts[found[0]].get_window_extent(renderer))
    # Headings run down the figure in that order, each over exactly its outcome's images.
    tops = [h.y1 for h in headings]
    assert tops == sorted(tops, reverse=True)
    image_tops = [ax.get_window_extent(renderer).y1 for ax in fig.axes]
    assert len(image_tops) == select_examples(y, p, m.threshold, k=24).size
    bounds = [h.y0 for h in headings] + [0.0]
    for outcome, upper, lower in zip(outcomes, bounds, bounds[1:], strict=False):
        between = [t for t in image_tops if lower < t < upper]
        assert len(between) == outcome.shown.size, outcome.name


def test_example_headings_say_none_for_missing_outcomes() -> None:
    y = np.array([0] * 10 + [1] * 10)
    p = np.where(y == 1, 0.9, 0.1)
    m = binary_metrics(y, p, n_bootstrap=0)
    fig = examples_figure(y, p, np.zeros((20, 96, 96, 3), np.uint8), m, title="")
    shown = [t.get_text() for t in fig.texts]
    assert "False negatives: none (label 1, p < 0.50)" in shown
    assert "False positives: none (label 0, p ≥ 0.50)" in shown
    assert "True positives: 10 (label 1, p ≥ 0.50)" in shown


def test_metrics_json_holds_the_given_summary(tmp_path: Path) -> None:
    y, p, _ = _cases(20, seed=4)
    m = binary_metrics(y, p, n_bootstrap=0)
    summary = {**m.to_dict(), "model": "pcamnet-s", "weights_sha256": "ab" * 32}
    write_report(tmp_path, y, p, m, summary=summary)
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary
