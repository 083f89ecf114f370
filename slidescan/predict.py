"""Patch files in, a CSV of tumour probabilities out (also in Kaggle's submission format)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from slidescan.device import select_device
from slidescan.inference import Normalizer, predict_dataset, prepare_model
from slidescan.patch_data import open_unlabelled_patches
from slidescan.weights import LoadedModel


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
    workers: int = 2,
) -> int:
    """Write one row per patch to ``out``; return the number of patches.

    Columns: ``id,probability,tumour`` (tumour = probability ≥ the model's threshold), or with
    ``kaggle`` the submission format ``id,label`` where label is the probability.
    """
    dataset = open_unlabelled_patches(inputs, resize=resize)
    torch_device = select_device(device)
    probs = predict_dataset(
        prepare_model(loaded.model, torch_device), dataset, Normalizer(loaded.card, torch_device),
        batch_size=batch_size, workers=workers, tta=tta,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
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
    os.replace(tmp, out)  # a half-written CSV never carries the final name
    return len(dataset)
