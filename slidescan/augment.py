"""Training augmentation for H&E patches, applied to whole batches on the training device.

Histology has no preferred orientation, so the 8 dihedral transforms (rotations by 90° and flips)
are label-preserving; stain intensity varies between labs and scanners, so the haematoxylin, eosin
and DAB concentrations are jittered in optical-density space (HED jitter, after Tellez et al. 2018).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Ruifrok & Johnston stain vectors (the matrix scikit-image uses for rgb2hed / hed2rgb).
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_RGB_FROM_HED[2] = torch.linalg.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def dihedral(x: Tensor, k: int) -> Tensor:
    """Apply dihedral transform ``k`` in 0..7 (rotation by 90°·(k mod 4), then a flip if k ≥ 4)."""
    out = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if k >= 4 else out


def random_dihedral(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each sample of the batch gets its own random dihedral transform."""
    ks = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for k in range(8):
        idx = (ks == k).nonzero().flatten().to(x.device)
        if idx.numel():
            out[idx] = dihedral(x[idx], k)
    return out


def hed_jitter(
    x: Tensor, sigma: float = 0.05, bias: float = 0.01, generator: torch.Generator | None = None
) -> Tensor:
    """Scale (×U(1±sigma)) and shift (+U(±bias)) each stain's optical density per sample.

    ``x`` is float RGB in [0, 1], shape (N, 3, H, W).
    """
    n = x.shape[0]
    alpha = 1 + (torch.rand(n, 1, 3, generator=generator) * 2 - 1) * sigma
    beta = (torch.rand(n, 1, 3, generator=generator) * 2 - 1) * bias
    alpha, beta = alpha.to(x.device), beta.to(x.device)
    od = -torch.log(x.clamp_min(1e-6)).flatten(2).transpose(1, 2)  # (N, HW, 3)
    stains = od @ _HED_FROM_RGB.to(x.device)
    od = (stains * alpha + beta) @ _RGB_FROM_HED.to(x.device)
    rgb = torch.exp(-od).clamp(0, 1)
    return rgb.transpose(1, 2).reshape(x.shape)


def augment_batch(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Dihedral + HED jitter on a float [0, 1] batch."""
    return hed_jitter(random_dihedral(x, generator), generator=generator)
