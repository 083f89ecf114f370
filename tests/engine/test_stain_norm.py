"""Stain normalisation: fitted once per slide, mapping a slide's colours onto the reference."""

from __future__ import annotations

import numpy as np
import pytest
from patch_fixtures import toy_patch
from skimage.color import hed2rgb, rgb2hed

from slidescan.engine.stain_norm import (
    StainMap,
    StainStats,
    fit_stain,
    fit_stain_reference,
    normalise_patches,
    stain_map,
)
from slidescan.errors import SlidescanError


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([toy_patch(i % 2, rng) for i in range(24)])


def _restain(x: np.ndarray, h: float, e: float) -> np.ndarray:
    hed = rgb2hed(x)
    hed[..., 0] *= h
    hed[..., 1] *= e
    return np.clip(np.rint(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_a_slide_mapped_onto_its_own_colours_is_unchanged(patches: np.ndarray, method: str) -> None:
    stats = fit_stain(method, patches)
    mapped = StainMap(stats, stats)(patches)
    assert np.abs(mapped.astype(int) - patches).mean() < 1.0


def test_a_restained_slide_gets_the_reference_colours_back(patches: np.ndarray) -> None:
    # Reinhard matches colour statistics, not pixels (blobs keep their own noise): the mean
    # colour comes back. (Toy patches are no H&E: Macenko's stain vectors are tested on real
    # patches by benchmarks/new_lab.py.)
    shifted = _restain(patches, 1.6, 0.5)
    mapping = stain_map("reinhard", shifted, fit_stain_reference(patches))
    assert mapping is not None
    target = patches.reshape(-1, 3).mean(axis=0)
    before = np.abs(shifted.reshape(-1, 3).mean(axis=0) - target).max()
    after = np.abs(mapping(shifted).reshape(-1, 3).mean(axis=0) - target).max()
    assert before > 5 and after < 1.5


def test_stats_round_trip_through_json(patches: np.ndarray) -> None:
    stats = fit_stain("macenko", patches)
    assert StainStats.from_dict(stats.to_dict()) == stats


def test_weights_without_a_reference_say_so(patches: np.ndarray) -> None:
    with pytest.raises(SlidescanError, match="carry no reinhard stain reference"):
        stain_map("reinhard", patches, {})
    with pytest.raises(SlidescanError, match="must be one of"):
        stain_map("vahadane", patches, {})
    assert stain_map("none", patches, {}) is None


def test_glass_alone_cannot_be_fitted() -> None:
    with pytest.raises(SlidescanError, match="stained pixels"):
        fit_stain("reinhard", np.full((4, 96, 96, 3), 245, np.uint8))


def test_patch_collections_get_one_map(tmp_path, patches: np.ndarray) -> None:
    from patch_fixtures import write_toy_set

    from slidescan.io.patches import open_patch_dataset

    data = open_patch_dataset(write_toy_set(tmp_path, 8))
    same = normalise_patches(data, "none", {})
    assert same is data
    mapped = normalise_patches(data, "reinhard", fit_stain_reference(patches))
    assert len(mapped) == len(data) and (mapped.labels == data.labels).all()
    image, label = mapped[0]
    assert image.shape == (3, 96, 96) and label == data[0][1]
    assert not np.array_equal(image.numpy(), data[0][0].numpy())
