"""Report files: valid PNGs of sensible size, metrics.json round-trip, example selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidescan.train.metrics import binary_metrics
from slidescan.train.report import select_examples, write_report

FIGURES = ("roc.png", "calibration.png", "confusion.png")


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
