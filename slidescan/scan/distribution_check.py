"""Is this slide like what the model was trained on? A feature-space check, plus the slide's scale.

The model's feature statistics (``model.feature_statistics``: per-channel means and standard
deviations of its activations at several scales) of training patches form a reference cloud: its
mean and a whitening matrix (inverse Cholesky factor of a Ledoit-Wolf shrunk covariance). A
patch's *distance* is the Mahalanobis distance of its features from that cloud, and the *patch
threshold* is the 99th percentile of the distances of patches held out of training. On a slide,
a random sample of tissue tiles is measured; the slide is flagged when more than
``SLIDE_OUTLIER_FRACTION`` of them lie beyond the patch threshold (about 1 % would, for tissue like
the training data), or when their median distance exceeds ``SLIDE_MEDIAN_RATIO`` of it (the
tissue as a whole is unusual, though few tiles are extreme). Other organs, stains, frozen
sections, blur and wrong scales move features away from the cloud; the flag says the call is
unreliable, it does not change it.

The scale check needs no model: slides scanned far coarser than the model's resolution must be
upsampled, and a level-0 resolution outside what slide scanners produce suggests wrong metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# Set on the first pcamnet-v2 run (benchmarks/RESULTS.md §5). Tissue like the training data: ~1 %
# of tiles beyond the patch threshold and a median distance of 0.53-0.72 of it (PCam valid, valid
# under strong hue shifts, a mosaic of Camelyon16 tiles); the CMU skin slide 10 % and 0.86; the
# TCGA head-and-neck slide 58-72 % and 1.03-1.08. Shipped model: CMU 6 % and 0.83, TCGA 80 % and
# 1.11, scanned PCam valid mosaics never flagged.
SLIDE_OUTLIER_FRACTION = 0.10
SLIDE_MEDIAN_RATIO = 0.80
PATCH_QUANTILE = 0.99
# Level-0 resolutions of real scanners (×10 to ×60 objectives); outside, the metadata is suspect.
PLAUSIBLE_MPP = (0.1, 1.2)


@dataclass
class FeatureReference:
    """The training patches' feature cloud and the held-out patch distance threshold."""

    mean: Tensor  # (C,)
    whiten: Tensor  # (C, C): distance = ||(f - mean) @ whiten||
    patch_threshold: float

    def distances(self, features: Tensor) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, C) from the training cloud."""
        z = (features.double() - self.mean.double()) @ self.whiten.double()
        return z.norm(dim=1).numpy()

    def to_tensors(self) -> dict[str, Tensor]:
        """Plain tensors for the weights file."""
        return {
            "mean": self.mean.float(),
            "whiten": self.whiten.float(),
            "patch_threshold": torch.tensor(self.patch_threshold, dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, raw: dict[str, Tensor]) -> FeatureReference:
        """Inverse of :meth:`to_tensors`."""
        return cls(raw["mean"], raw["whiten"], float(raw["patch_threshold"]))


def supports_features(model: nn.Module) -> bool:
    """True when the model exposes feature statistics (``feature_statistics``)."""
    return callable(getattr(model, "feature_statistics", None))


@torch.inference_mode()
def feature_batches(model: nn.Module, batches: Any, normalize: Any) -> Tensor:
    """Features (N, C) of uint8 batches (iterable of N×3×H×W tensors), in order."""
    out = [model.feature_statistics(normalize(batch)).float().cpu() for batch in batches]  # type: ignore[operator]
    return torch.cat(out) if out else torch.zeros(0, 0)


def fit_reference(train_features: Tensor, holdout_features: Tensor) -> FeatureReference:
    """Reference cloud from training features; patch threshold from held-out features."""
    from sklearn.covariance import LedoitWolf

    x = train_features.double().numpy()
    cov = LedoitWolf().fit(x).covariance_
    chol = np.linalg.cholesky(cov)
    # distance² = (f - m)ᵀ Σ⁻¹ (f - m) = ||L⁻¹ (f - m)||² with Σ = L Lᵀ.
    whiten = np.linalg.inv(chol).T
    ref = FeatureReference(torch.from_numpy(x.mean(0)), torch.from_numpy(whiten), 0.0)
    ref.patch_threshold = float(np.quantile(ref.distances(holdout_features), PATCH_QUANTILE))
    return ref


@dataclass(frozen=True)
class DistributionCheck:
    """The verdict on one slide: ``flagged`` when its call should not be trusted as is."""

    flagged: bool
    reasons: tuple[str, ...] = field(default=())
    outlier_fraction: float | None = None  # sampled tissue tiles beyond the patch threshold
    median_distance_ratio: float | None = None  # median tile distance / patch threshold
    tiles_checked: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out

    def describe(self) -> str:
        """A short phrase for terminal lines, tables and titles ('' when not flagged)."""
        return "OUT OF DISTRIBUTION: " + "; ".join(self.reasons) if self.flagged else ""


def check_features(distances: np.ndarray, patch_threshold: float) -> DistributionCheck:
    """Slide verdict from the feature distances of a sample of its tissue tiles."""
    d = np.asarray(distances, dtype=np.float64)
    if d.size == 0:
        return DistributionCheck(False)
    fraction = float((d > patch_threshold).mean())
    ratio = float(np.median(d) / patch_threshold)
    reasons: tuple[str, ...] = ()
    if fraction > SLIDE_OUTLIER_FRACTION or ratio > SLIDE_MEDIAN_RATIO:
        reasons = (
            f"tissue unlike the training patches ({fraction:.0%} of sampled tiles outlying, "
            f"median distance {ratio:.2f} of the limit): other organ, stain or focus?",
        )
    return DistributionCheck(
        flagged=bool(reasons),
        reasons=reasons,
        outlier_fraction=fraction,
        median_distance_ratio=ratio,
        tiles_checked=int(d.size),
    )


def check_scale(slide_mpp: float, model_mpp: float) -> tuple[str, ...]:
    """Reasons to doubt the slide's scale ('' when it looks right)."""
    reasons = []
    if slide_mpp > 1.5 * model_mpp:
        reasons.append(
            f"slide resolution {slide_mpp:.3g} µm/px is coarser than the model's "
            f"{model_mpp:.3g} µm/px: tiles are upsampled"
        )
    low, high = PLAUSIBLE_MPP
    if not low <= slide_mpp <= high:
        reasons.append(
            f"{slide_mpp:.3g} µm/px at full resolution is unusual for a slide scanner "
            "(check the slide's metadata or --mpp)"
        )
    return tuple(reasons)


def combine(feature_check: DistributionCheck, scale_reasons: tuple[str, ...]) -> DistributionCheck:
    """One verdict from the feature check and the scale check."""
    if not scale_reasons:
        return feature_check
    return DistributionCheck(
        flagged=True,
        reasons=feature_check.reasons + scale_reasons,
        outlier_fraction=feature_check.outlier_fraction,
        median_distance_ratio=feature_check.median_distance_ratio,
        tiles_checked=feature_check.tiles_checked,
    )
