"""The out-of-distribution check: feature distances on synthetic features and on synthetic colour
shifts of toy H&E patches, the slide verdict, and the scale check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from patch_fixtures import toy_patch

from slidescan.engine.inference import Normalizer
from slidescan.engine.weights import ModelCard
from slidescan.models import create_model
from slidescan.scan.distribution_check import (
    SLIDE_OUTLIER_FRACTION,
    DistributionCheck,
    FeatureReference,
    check_features,
    check_scale,
    combine,
    feature_batches,
    fit_reference,
    supports_features,
)


def _gaussian(n: int, dim: int = 16, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    cov = np.diag(np.linspace(0.2, 3.0, dim))
    x = rng.multivariate_normal(np.full(dim, 1.0), cov, size=n) + shift
    return torch.from_numpy(x)


def test_reference_threshold_is_the_held_out_99th_percentile() -> None:
    ref = fit_reference(_gaussian(4000, seed=0), _gaussian(2000, seed=1))
    fresh = ref.distances(_gaussian(4000, seed=2))
    assert (fresh > ref.patch_threshold).mean() == pytest.approx(0.01, abs=0.006)
    # Mahalanobis: whitened, so d² of in-distribution points averages about the dimension.
    assert np.mean(fresh**2) == pytest.approx(16, rel=0.1)


def test_reference_round_trips_through_tensors() -> None:
    ref = fit_reference(_gaussian(500, seed=0), _gaussian(200, seed=1))
    back = FeatureReference.from_tensors(ref.to_tensors())
    x = _gaussian(50, seed=3)
    np.testing.assert_allclose(back.distances(x), ref.distances(x), rtol=1e-5)
    assert back.patch_threshold == pytest.approx(ref.patch_threshold)


def test_slide_flag_follows_the_share_of_outlying_tiles() -> None:
    ref = fit_reference(_gaussian(4000, seed=0), _gaussian(2000, seed=1))
    normal = check_features(ref.distances(_gaussian(256, seed=4)), ref.patch_threshold)
    assert not normal.flagged and normal.outlier_fraction is not None
    assert normal.outlier_fraction < SLIDE_OUTLIER_FRACTION and normal.tiles_checked == 256
    shifted = check_features(ref.distances(_gaussian(256, shift=2.0, seed=5)), ref.patch_threshold)
    assert shifted.flagged and shifted.outlier_fraction is not None
    assert shifted.outlier_fraction > 0.5 and "unlike the training patches" in shifted.describe()
    # Few extreme tiles, but the whole sample sits far out: flagged by the median.
    median_only = check_features(np.full(100, 0.9), 1.0)
    assert median_only.flagged and median_only.outlier_fraction == 0.0
    assert not check_features(np.full(100, 0.7), 1.0).flagged
    assert shifted.median_distance_ratio is not None and shifted.median_distance_ratio > 1
    assert check_features(np.array([]), 1.0) == DistributionCheck(False)


def _toy_batch(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    patches = np.stack([toy_patch(int(i % 2), rng) for i in range(n)])
    return torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()


def _shift_colour(batch: torch.Tensor, strength: float) -> torch.Tensor:
    """A lab with a different stain: scale the optical density of the pink and the purple."""
    x = batch.float().div(255).clamp_min(1 / 255)
    od = -torch.log(x) * torch.tensor([1 - strength, 1 + strength, 1 - strength]).view(1, 3, 1, 1)
    return torch.exp(-od).mul(255).round().clamp(0, 255).to(torch.uint8)


def test_colour_shifted_patches_are_flagged_and_more_so_when_stronger() -> None:
    torch.manual_seed(0)
    model = create_model("pcamnet-v2").eval()  # untrained features still see colour
    assert supports_features(model) and not supports_features(create_model("pcamnet-s"))
    normalizer = Normalizer(ModelCard(model="pcamnet-v2"), torch.device("cpu"))
    embed = lambda batch: feature_batches(model, [batch], normalizer)  # noqa: E731
    ref = fit_reference(embed(_toy_batch(600, seed=0)), embed(_toy_batch(300, seed=1)))
    clean = _toy_batch(128, seed=2)
    verdicts = [
        check_features(ref.distances(embed(_shift_colour(clean, s))), ref.patch_threshold)
        for s in (0.0, 0.3, 0.6)
    ]
    assert not verdicts[0].flagged
    assert verdicts[2].flagged
    fractions = [v.outlier_fraction for v in verdicts]
    assert fractions == sorted(fractions) and fractions[0] < fractions[2]  # type: ignore[type-var]


def test_scale_check() -> None:
    assert check_scale(0.25, 0.972) == ()
    assert check_scale(0.5, 0.972) == ()
    coarse = check_scale(2.0, 0.972)
    assert any("upsampled" in r for r in coarse) and any("unusual" in r for r in coarse)
    assert any("unusual" in r for r in check_scale(0.02, 0.972))


def test_combine_keeps_feature_numbers_and_adds_scale_reasons() -> None:
    features = DistributionCheck(False, (), 0.02, 0.8, 256)
    assert combine(features, ()) is features
    both = combine(features, ("scale looks wrong",))
    assert both.flagged and both.reasons == ("scale looks wrong",)
    assert both.outlier_fraction == 0.02 and both.tiles_checked == 256
    assert both.to_dict()["reasons"] == ["scale looks wrong"]
