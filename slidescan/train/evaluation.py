"""Judge a trained model on labelled patches: probabilities, metrics with CIs, report pictures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidescan.about import __version__
from slidescan.engine.inference import make_predictor, predict_dataset
from slidescan.engine.weights import LoadedModel
from slidescan.io.patches import PatchDataset
from slidescan.train.metrics import BinaryMetrics, binary_metrics


@dataclass
class Evaluation:
    """Per-patch probabilities, the metrics at the model's own threshold, and what produced
    them (model, weights file, engine, test-time augmentation, data)."""

    labels: np.ndarray
    probs: np.ndarray
    metrics: BinaryMetrics
    engine: str = "torch"
    model: str = ""
    weights_sha256: str = ""
    data: str = ""
    tta: bool = False

    def summary(self) -> dict[str, Any]:
        """The metrics and their provenance as one JSON-ready dict (nan as None): the object
        ``slidescan evaluate --json`` prints and the report's metrics.json holds."""
        return {
            **self.metrics.to_dict(), "model": self.model, "tta": self.tta,
            "engine": self.engine, "data": self.data, "weights_sha256": self.weights_sha256,
            "slidescan_version": __version__,
        }  # fmt: skip


class PatchImages:
    """Lazy HWC view of a patch dataset, so a report reads only the examples it shows."""

    def __init__(self, dataset: PatchDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.dataset[int(i)][0].permute(1, 2, 0).numpy()


def evaluate(
    loaded: LoadedModel,
    dataset: PatchDataset,
    *,
    device: str = "auto",
    backend: str = "auto",
    tta: bool = False,
    batch_size: int = 256,
    workers: int = 2,
    n_bootstrap: int = 1000,
) -> Evaluation:
    """Run ``loaded`` over a labelled dataset and compute metrics at its card's threshold."""
    predictor = make_predictor(loaded, device, backend)
    probs = predict_dataset(
        predictor.model, dataset, predictor.normalizer, batch_size=batch_size, workers=workers,
        tta=tta, desc="evaluate",
    )  # fmt: skip
    labels = np.asarray(dataset.labels)
    metrics = binary_metrics(labels, probs, loaded.card.threshold, n_bootstrap=n_bootstrap)
    return Evaluation(
        labels=labels, probs=probs, metrics=metrics, engine=predictor.engine,
        model=loaded.card.model, weights_sha256=loaded.sha256, data=dataset.description, tta=tta,
    )  # fmt: skip


def write_evaluation_report(
    out_dir: Path, result: Evaluation, dataset: PatchDataset, title: str
) -> list[Path]:
    """ROC, calibration, confusion-matrix and example-patch figures plus metrics.json (which
    holds :meth:`Evaluation.summary`)."""
    from slidescan.train.report import write_report

    return write_report(
        out_dir, result.labels, result.probs, result.metrics, PatchImages(dataset), title=title,
        summary=result.summary(),
    )  # fmt: skip
