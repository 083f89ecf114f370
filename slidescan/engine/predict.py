"""Patch files in, a CSV of tumour probabilities out (also in Kaggle's submission format)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from slidescan.engine.inference import make_predictor, predict_dataset
from slidescan.engine.weights import LoadedModel
from slidescan.io.atomic import atomic_write
from slidescan.io.patches import open_unlabelled_patches


def predict_patches(
    loaded: LoadedModel,
    inputs: Sequence[Path],
    out: Path,
    *,
    kaggle: bool = False,
    tta: bool = False,
    batch_size: int = 256,
    resize: bool = False,
    device: str = "auto",
    backend: str = "auto",
    workers: int = 2,
) -> int:
    """Write one row per patch to ``out``; return the number of patches.

    Columns: ``id,probability,tumour`` (tumour = probability ≥ the model's threshold), or with
    ``kaggle`` the submission format ``id,label`` where label is the probability.
    """
    dataset = open_unlabelled_patches(inputs, resize=resize)
    predictor = make_predictor(loaded, device, backend)
    probs = predict_dataset(
        predictor.model, dataset, predictor.normalizer,
        batch_size=batch_size, workers=workers, tta=tta,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        if kaggle:
            writer.writerow(["id", "label"])
            writer.writerows((i, f"{p:.6f}") for i, p in zip(dataset.ids, probs, strict=True))
        else:
            writer.writerow(["id", "probability", "tumour"])
            t = loaded.card.threshold
            writer.writerows(
                (i, f"{p:.6f}", int(p >= t)) for i, p in zip(dataset.ids, probs, strict=True)
            )
    return len(dataset)
