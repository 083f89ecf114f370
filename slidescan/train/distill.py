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


class SoftTargets(Dataset):
    """``(patch, target)`` with target = (1 − weight) · label + weight · teacher probability.

    The student sees augmented patches while the teachers scored the clean ones: the target says
    what the patch is, which augmentation must not change.
    """

    def __init__(self, data: Dataset, teacher_probs: np.ndarray, weight: float) -> None:
        if len(teacher_probs) != len(data):  # type: ignore[arg-type]
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


def teacher_probabilities(
    teachers: Sequence[Path],
    data: Dataset,
    *,
    holdout_ids: Sequence[str] | None,
    device: str = "auto",
    workers: int = 2,
) -> np.ndarray:
    """The teachers' ensemble probability (mean logit) for every item of ``data``, unaugmented.

    ``holdout_ids``: the patches this run holds out to choose its epoch and thresholds. A teacher
    that trained on any of them would leak them into the student, so it is refused.
    """
    if not teachers:
        raise SlidescanError("distillation needs at least one --teacher weights file")
    logits = np.zeros(len(data), dtype=np.float64)  # type: ignore[arg-type]
    for path in teachers:
        loaded = load_weights(path)
        if holdout_ids is not None:
            _check_no_leak(path, loaded.card.training, holdout_ids)
        predictor = make_predictor(loaded, device, "torch")
        probs = predict_dataset(
            predictor.model, data, predictor.normalizer, workers=workers,
            desc=f"teacher {path.name}",
        )  # fmt: skip
        p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
        logits += np.log(p / (1 - p))
    return 1.0 / (1.0 + np.exp(-logits / len(teachers)))


def _check_no_leak(path: Path, training: dict, holdout_ids: Sequence[str]) -> None:
    theirs = training.get("holdout_ids")
    if not theirs:
        raise SlidescanError(
            f"teacher {path.name} records no held-out patches, so it may have trained on the "
            "ones this run holds out; use teachers trained on the same data with the same "
            "--val-fraction and --seed"
        )
    missing = set(holdout_ids) - set(theirs)
    if missing:
        raise SlidescanError(
            f"teacher {path.name} trained on {len(missing)} of the patches this run holds out; "
            "use teachers trained on the same data with the same --val-fraction and --seed"
        )
