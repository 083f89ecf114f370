"""The shipped model (weights/pcamnet-v2.pt, installed as ``slidescan.shipped_weights``) on real
PatchCamelyon validation patches.

A fixed, seeded sample of 400 patches (200 per class) from ``pcam-jpeg/valid`` keeps this quick;
the floors sit below the full-set figures (AUC ~0.93, accuracy ~0.85) to allow for sampling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidescan.engine.weights import PCAM_MPP, LoadedModel, load_weights, shipped_weights_path
from slidescan.io.patches import ImageFilePatchDataset, PatchDataset, open_patch_dataset
from slidescan.train.evaluation import evaluate

PER_CLASS = 200
SAMPLE_SEED = 2024
MIN_AUC = 0.90
MIN_ACCURACY = 0.82

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    # No skip when the file is missing: the shipped weights are part of the product.
    path = shipped_weights_path()
    assert path.is_file(), f"shipped weights missing: {path}"
    return load_weights()  # the default path is the shipped file


def _balanced_sample(full: PatchDataset, per_class: int, seed: int) -> ImageFilePatchDataset:
    assert isinstance(full, ImageFilePatchDataset)
    rng = np.random.default_rng(seed)
    picked = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(full.labels == c), per_class, replace=False) for c in (0, 1)]
        )
    )
    return ImageFilePatchDataset(
        [full.paths[i] for i in picked],
        [full.ids[i] for i in picked],
        full.labels[picked],
        f"{len(picked)}-patch seeded sample of {full.description}",
    )


@pytest.fixture(scope="module")
def valid_sample(data_dir: Path) -> ImageFilePatchDataset:
    full = open_patch_dataset(data_dir / "pcam-jpeg", split="valid")
    return _balanced_sample(full, PER_CLASS, SAMPLE_SEED)


def test_sample_is_fixed_and_balanced(valid_sample: ImageFilePatchDataset, data_dir: Path) -> None:
    assert len(valid_sample) == 2 * PER_CLASS
    assert int(valid_sample.labels.sum()) == PER_CLASS
    assert len(set(valid_sample.ids)) == 2 * PER_CLASS
    again = _balanced_sample(
        open_patch_dataset(data_dir / "pcam-jpeg", split="valid"), PER_CLASS, SAMPLE_SEED
    )
    assert again.ids == valid_sample.ids


def test_card(shipped: LoadedModel) -> None:
    card = shipped.card
    assert card.model == "pcamnet-v2"
    assert card.mpp == pytest.approx(PCAM_MPP, abs=1e-3)
    assert card.mpp == pytest.approx(0.972, abs=1e-3)
    assert card.input_size == 96
    assert 0 < card.threshold < 1
    assert len(card.mean) == 3 and len(card.std) == 3
    assert card.training, "the card should describe how the model was trained"
    assert shipped.path == shipped_weights_path()
    assert len(shipped.sha256) == 64


def test_card_is_calibrated_on_held_out_training_patches(shipped: LoadedModel) -> None:
    card = shipped.card
    assert card.extent_threshold is not None and card.seed_threshold is not None
    assert card.threshold <= card.extent_threshold < card.seed_threshold < 1
    held_out = set(card.training["holdout_ids"])
    assert card.calibration["holdout_patches"] == len(held_out) > 1000
    # The simulated false-positive rate at the calibration size meets its 1 % target (±noise).
    assert card.calibration["false_positive_rate_by_tissue_cells"]["40000"] <= 0.02
    assert shipped.feature_reference is not None and shipped.int8_onnx is not None


def test_accuracy_on_pcam_validation_sample(
    shipped: LoadedModel, valid_sample: ImageFilePatchDataset
) -> None:
    result = evaluate(shipped, valid_sample, workers=0, n_bootstrap=200)
    m = result.metrics
    summary = (
        f"AUC {m.auc:.4f} (95% CI {m.auc_ci[0]:.3f}-{m.auc_ci[1]:.3f}), accuracy {m.accuracy:.4f}, "
        f"sensitivity {m.sensitivity:.3f}, specificity {m.specificity:.3f} "
        f"at threshold {m.threshold:.3f} on {valid_sample.description}"
    )
    print(summary)
    assert m.n == 2 * PER_CLASS
    assert m.threshold == pytest.approx(shipped.card.threshold)
    assert m.auc >= MIN_AUC, summary
    assert m.accuracy >= MIN_ACCURACY, summary
