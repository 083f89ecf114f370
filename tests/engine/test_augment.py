"""Augmentation: the dihedral group really is 8 invertible transforms; HED jitter is a stain
perturbation that is the identity at zero strength, stays in range and is reproducible."""

from __future__ import annotations

import pytest
import torch

from slidescan.engine.augment import (
    augment_batch,
    brightness_contrast_jitter,
    dihedral,
    hed_jitter,
    hue_saturation_jitter,
    random_blur,
    random_dihedral,
)


def _asymmetric(n: int = 1, side: int = 8, seed: int = 0) -> torch.Tensor:
    """Random images: no rotation or flip maps one onto itself."""
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_dihedral_gives_8_distinct_transforms() -> None:
    x = _asymmetric()
    outs = [dihedral(x, k) for k in range(8)]
    for k, out in enumerate(outs):
        assert out.shape == x.shape
        # A permutation of pixels: same values, nothing lost or invented.
        assert torch.equal(out.flatten().sort().values, x.flatten().sort().values), k
    for a in range(8):
        for b in range(a + 1, 8):
            assert not torch.equal(outs[a], outs[b]), f"transforms {a} and {b} coincide"


def test_dihedral_identity_and_inverses() -> None:
    x = _asymmetric()
    assert torch.equal(dihedral(x, 0), x)
    for k in range(8):
        inverses = [j for j in range(8) if torch.equal(dihedral(dihedral(x, k), j), x)]
        assert len(inverses) == 1, f"transform {k}: inverses {inverses}"


def test_dihedral_is_closed_under_composition() -> None:
    x = _asymmetric()
    outs = [dihedral(x, k) for k in range(8)]
    for a in range(8):
        for b in range(8):
            composed = dihedral(dihedral(x, a), b)
            assert any(torch.equal(composed, o) for o in outs), (a, b)


def test_dihedral_acts_on_each_sample_alike() -> None:
    x = _asymmetric(n=3)
    for k in range(8):
        out = dihedral(x, k)
        for i in range(3):
            assert torch.equal(out[i], dihedral(x[i : i + 1], k)[0])


def _which_transform(out: torch.Tensor, inp: torch.Tensor) -> list[int]:
    return [k for k in range(8) if torch.equal(out, dihedral(inp, k))]


def test_random_dihedral_keeps_each_samples_content() -> None:
    x = _asymmetric(n=64, seed=1)
    out = random_dihedral(x, generator=_gen(0))
    assert out.shape == x.shape
    used = []
    for i in range(len(x)):
        ks = _which_transform(out[i], x[i])
        assert len(ks) == 1, f"sample {i} is no dihedral transform of its input"
        used.append(ks[0])
    # 64 samples: every one of the 8 transforms should occur (probability of a miss ~ 1e-3).
    assert set(used) == set(range(8))


def test_random_dihedral_is_seeded() -> None:
    x = _asymmetric(n=16, seed=2)
    a = random_dihedral(x, generator=_gen(5))
    b = random_dihedral(x, generator=_gen(5))
    c = random_dihedral(x, generator=_gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _he_like(n: int = 4, side: int = 16, seed: int = 0, low: float = 0.05) -> torch.Tensor:
    """RGB in [low, 1], roughly H&E coloured (pink/purple), plus a white and a dark pixel."""
    g = _gen(seed)
    base = torch.tensor([0.85, 0.55, 0.75]).view(1, 3, 1, 1)
    x = (base + 0.3 * (torch.rand(n, 3, side, side, generator=g) - 0.5)).clamp(low, 1)
    x[:, :, 0, 0] = 1.0
    x[:, :, 0, 1] = low
    return x


def test_hed_jitter_at_zero_strength_is_identity() -> None:
    x = _he_like()
    out = hed_jitter(x, sigma=0.0, bias=0.0, generator=_gen(0))
    assert out.shape == x.shape
    torch.testing.assert_close(out, x, rtol=0, atol=1e-4)


def test_hed_jitter_changes_colours_per_sample() -> None:
    x = _he_like(n=1).repeat(4, 1, 1, 1)  # four copies of one image
    out = hed_jitter(x, sigma=0.2, bias=0.05, generator=_gen(0))
    assert (out - x).abs().max() > 0.01
    assert not torch.allclose(out[0], out[1], atol=1e-3), "samples should get their own jitter"


@pytest.mark.parametrize("sigma, bias", [(0.05, 0.01), (0.5, 0.2), (1.0, 1.0)])
def test_hed_jitter_stays_in_range(sigma: float, bias: float) -> None:
    x = torch.rand(8, 3, 12, 12, generator=_gen(3))
    x[:, :, 0, :] = 0.0  # black pixels: log(0) must not leak out as nan/inf
    x[:, :, 1, :] = 1.0
    out = hed_jitter(x, sigma=sigma, bias=bias, generator=_gen(1))
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def test_hed_jitter_is_seeded() -> None:
    x = _he_like()
    a = hed_jitter(x, sigma=0.1, bias=0.02, generator=_gen(7))
    b = hed_jitter(x, sigma=0.1, bias=0.02, generator=_gen(7))
    c = hed_jitter(x, sigma=0.1, bias=0.02, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_hed_jitter_does_not_modify_input() -> None:
    x = _he_like()
    before = x.clone()
    hed_jitter(x, generator=_gen(0))
    random_dihedral(x, generator=_gen(0))
    assert torch.equal(x, before)


def test_augment_batch_shape_range_and_seed() -> None:
    x = _he_like(n=6, side=96, seed=4)
    a = augment_batch(x, generator=_gen(0))
    b = augment_batch(x, generator=_gen(0))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)


@pytest.mark.parametrize("level", ["none", "basic", "strong"])
def test_every_level_keeps_shape_range_and_is_seeded(level: str) -> None:
    x = _he_like(n=8, side=96, seed=5)
    a = augment_batch(x, level=level, generator=_gen(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, augment_batch(x, level=level, generator=_gen(1)))
    assert torch.equal(a, x) == (level == "none")
    with pytest.raises(ValueError, match="augmentation level"):
        augment_batch(x, level="extreme")


def test_hue_saturation_identity_grey_and_per_sample() -> None:
    x = _he_like(n=4, side=16, seed=6)
    same = hue_saturation_jitter(x, hue=0.0, saturation=0.0, generator=_gen(0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    grey = torch.full((2, 3, 4, 4), 0.5)  # no chroma: hue and saturation changes leave it
    torch.testing.assert_close(
        hue_saturation_jitter(grey, generator=_gen(0)), grey, atol=1e-5, rtol=0
    )
    out = hue_saturation_jitter(x, hue=0.05, saturation=0.3, generator=_gen(0))
    changes = (out - x).abs().mean(dim=(1, 2, 3))
    assert (changes > 1e-3).all() and changes.unique().numel() == len(x)
    # Luma (Y of YIQ) is what hue and saturation leave alone, up to clipping at [0, 1].
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    diff = ((out - x) * luma).sum(1).abs()
    assert diff.median() < 1e-4 and diff.max() < 0.05


def test_brightness_contrast_identity_and_direction() -> None:
    x = _he_like(n=4, side=16, seed=7)
    same = brightness_contrast_jitter(x, brightness=0, contrast=0, channel=0, generator=_gen(0))
    torch.testing.assert_close(same, x)
    out = brightness_contrast_jitter(x, brightness=0.0, contrast=0.5, channel=0, generator=_gen(0))
    # Contrast alone keeps each sample's mean (where nothing clips) and changes its spread.
    assert not torch.allclose(out.std(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)))


def test_random_blur_smooths_only_the_chosen_samples() -> None:
    x = torch.rand(16, 3, 32, 32, generator=_gen(8))
    out = random_blur(x, p=0.5, generator=_gen(3))
    changed = [not torch.equal(out[i], x[i]) for i in range(len(x))]
    assert 0 < sum(changed) < len(x)
    for i, c in enumerate(changed):
        if c:  # blurred: less high-frequency energy, same mean
            assert out[i].diff(dim=-1).abs().mean() < 0.7 * x[i].diff(dim=-1).abs().mean()
            assert out[i].mean() == pytest.approx(float(x[i].mean()), abs=0.01)
    assert torch.equal(random_blur(x, p=0.0, generator=_gen(3)), x)
