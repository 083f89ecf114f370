"""Knowledge distillation: soft training targets from an ensemble of trained models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from slidescan.engine.inference import make_predictor, predict_dataset
from slidescan.engine.weights import load_weights
from slidescan.errors import SlidescanError
from slidescan.train.data_split import dataset_size


class SoftTargets(Dataset):
    """``(patch, target)`` with target = (1 − weight) · label + weight · teacher probability.

    The student sees augmented patches while the teachers scored the clean ones: the target says
    what the patch is, which augmentation must not change.
    """

    def __init__(self, data: Dataset, teacher_probs: np.ndarray, weight: float) -> None:
        if len(teacher_probs) != dataset_size(data):
            raise ValueError("one teacher probability per item is needed")
        self.data = data
        self.teacher_probs = teacher_probs.astype(np.float32)
        self.weight = weight

    def __len__(self) -> int:
        return len(self.teacher_probs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.data[i]
        target = (1.0 - self.weight) * float(label) + self.weight * float(self.teacher_probs[i])
        return image, torch.tensor(target, dtype=torch.float32)


def check_distill_settings(weight: float, *, separate_validation: bool) -> None:
    """Refuse distillation settings that are wrong before any work is done.

    The teachers' share is at most the label's, so every target stays on its label's side of
    0.5. Teachers are only checked against a held-out part of the training data: with a
    separate validation set nothing tells whether a teacher trained on it.
    """
    if not 0.0 < weight <= 0.5:
        raise SlidescanError(
            f"distill_weight must be in (0, 0.5], got {weight}", param="distill_weight"
        )
    if separate_validation:
        raise SlidescanError(
            "teachers work with a held-out part of the training data (val_fraction), not with "
            "separate validation data: only then can slidescan check that no teacher trained on "
            "the held-out patches",
            param="teacher",
        )


def teacher_probabilities(
    teachers: Sequence[Path],
    data: Dataset,
    *,
    holdout_ids: Sequence[str],
    device: str = "auto",
    workers: int = 2,
    progress: bool = True,
) -> np.ndarray:
    """The teachers' ensemble probability (sigmoid of their mean logit) for every item of
    ``data``, unaugmented.

    ``holdout_ids``: the patches this run holds out to choose its epoch and thresholds. A teacher
    that did not hold out every one of them may have trained on them, which would leak them
    into the student, so it is refused (as is a run whose patches have no ids to check).
    """
    if not teachers:
        raise SlidescanError(
            "distillation needs at least one teacher weights file", param="teacher"
        )
    if not holdout_ids:
        raise SlidescanError(
            "the training patches have no ids, so no teacher can be checked for having "
            "trained on the held-out ones",
            param="teacher",
        )
    logits = np.zeros(dataset_size(data), dtype=np.float64)
    for path in teachers:
        loaded = load_weights(path)
        _check_no_leak(path, loaded.card.training, holdout_ids)
        predictor = make_predictor(loaded, device, "torch")
        probs = predict_dataset(
            predictor.model, data, predictor.normalizer, workers=workers,
            desc=f"teacher {path.name}", progress=progress,
        )  # fmt: skip
        p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
        logits += np.log(p / (1 - p))
    return 1.0 / (1.0 + np.exp(-logits / len(teachers)))


def _check_no_leak(path: Path, training: dict, holdout_ids: Sequence[str]) -> None:
    theirs = training.get("holdout_ids")
    same_split = (
        "use teachers trained on the same data with the same val_fraction and seed, or hold "
        "out their patches with --holdout-from"
    )
    if not theirs:
        raise SlidescanError(
            f"teacher {path.name} records no held-out patches, so it may have trained on the "
            f"ones this run holds out; {same_split}",
            param="teacher",
        )
    missing = set(holdout_ids) - set(theirs)
    if missing:
        raise SlidescanError(
            f"teacher {path.name} did not hold out {len(missing)} of the patches this run holds "
            f"out, so it may have trained on them; {same_split}",
            param="teacher",
        )
