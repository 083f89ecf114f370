"""Training augmentation for H&E patches, applied to whole batches on the training device.

Histology has no preferred orientation, so the 8 dihedral transforms (rotations by 90° and flips)
are label-preserving. Stain, scanner and focus vary between labs; a model trained on one set of
slides must not learn their colours. Tellez et al. 2019 (*Quantifying the effects of data
augmentation and stain color normalization…*) found strong HED + HSV + brightness/contrast
augmentation the best single defence against unseen labs, so ``strong`` does all of them:

- HED: each stain's optical density scaled by U(1 ± 0.2) and shifted by U(± 0.05) (HED-strong's
  ±0.2 scale; the shift is given in natural-log optical density);
- hue rotated by U(± 0.05) turns and saturation scaled by U(0.7, 1.3) (linear, in YIQ space);
- contrast ×U(0.75, 1.25) about the patch mean, brightness + U(± 0.1), and each channel
  ×U(0.95, 1.05);
- a Gaussian blur (σ 0.5–1.5 px) on 20 % of patches, for scans slightly out of focus.

``basic`` is the earlier recipe (dihedral + HED σ 0.05, bias 0.01); ``none`` turns it all off.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slidescan.vocabulary import Augment

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


AUGMENT_LEVELS = tuple(Augment)

# RGB → YIQ (NTSC): Y is luma, I/Q the chroma plane; a rotation of (I, Q) turns the hue and a
# scaling of it changes saturation, both as one 3×3 matrix per sample.
_YIQ_FROM_RGB = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float32
)
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def hue_saturation_jitter(
    x: Tensor,
    hue: float = 0.05,
    saturation: float = 0.3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per sample: turn the hue by U(± ``hue``) turns, scale saturation by U(1 ± ``saturation``)."""
    n = x.shape[0]
    angle = _uniform(n, -hue, hue, generator) * 2 * torch.pi
    sat = _uniform(n, 1 - saturation, 1 + saturation, generator)
    cos, sin = torch.cos(angle) * sat, torch.sin(angle) * sat
    chroma = torch.zeros(n, 3, 3)
    chroma[:, 0, 0] = 1
    chroma[:, 1, 1], chroma[:, 1, 2] = cos, -sin
    chroma[:, 2, 1], chroma[:, 2, 2] = sin, cos
    mix = (_RGB_FROM_YIQ @ chroma @ _YIQ_FROM_RGB).to(x.device)  # (N, 3, 3)
    out = torch.einsum("nij,njhw->nihw", mix, x)
    return out.clamp(0, 1)


def brightness_contrast_jitter(
    x: Tensor,
    brightness: float = 0.1,
    contrast: float = 0.25,
    channel: float = 0.05,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per sample: contrast ×U(1 ± ``contrast``) about its mean, + U(± ``brightness``), and each
    channel ×U(1 ± ``channel``)."""
    n = x.shape[0]
    c = _uniform(n, 1 - contrast, 1 + contrast, generator).view(n, 1, 1, 1).to(x.device)
    b = _uniform(n, -brightness, brightness, generator).view(n, 1, 1, 1).to(x.device)
    g = (1 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * channel).to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (((x - mean) * c + mean + b) * g).clamp(0, 1)


def random_blur(
    x: Tensor,
    p: float = 0.2,
    sigma: tuple[float, float] = (0.5, 1.5),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian-blur a random ``p`` of the samples, each with σ ~ U(``sigma``) pixels."""
    n = x.shape[0]
    chosen = (torch.rand(n, generator=generator) < p).nonzero().flatten()
    if chosen.numel() == 0:
        return x
    sigmas = _uniform(chosen.numel(), *sigma, generator)
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-(t[None] ** 2) / (2 * sigmas[:, None] ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(x.device)  # (k, 7)
    sub = x[chosen.to(x.device)]  # (k, 3, H, W)
    k = sub.shape[0]
    # Separable blur as grouped convolutions: one group per (sample, channel).
    flat = sub.reshape(1, k * 3, *sub.shape[-2:])
    w = kernels.repeat_interleave(3, dim=0)
    flat = torch.nn.functional.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = torch.nn.functional.conv2d(flat, w.view(k * 3, 1, 1, -1), groups=k * 3)
    flat = torch.nn.functional.conv2d(flat, w.view(k * 3, 1, -1, 1), groups=k * 3)
    out = x.clone()
    out[chosen.to(x.device)] = flat.view_as(sub)
    return out


def augment_batch(
    x: Tensor, level: str = "strong", generator: torch.Generator | None = None
) -> Tensor:
    """Augment a float [0, 1] (N, 3, H, W) batch at ``level`` (none, basic or strong)."""
    if level == "none":
        return x
    if level == "basic":
        return hed_jitter(random_dihedral(x, generator), generator=generator)
    if level != "strong":
        raise ValueError(f"augmentation level must be one of {AUGMENT_LEVELS}, got {level!r}")
    x = random_dihedral(x, generator)
    x = hed_jitter(x, sigma=0.2, bias=0.05, generator=generator)
    x = hue_saturation_jitter(x, generator=generator)
    x = brightness_contrast_jitter(x, generator=generator)
    return random_blur(x, generator=generator)
