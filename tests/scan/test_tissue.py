"""Tissue masks on synthetic H&E-like images: blobs found, glass and pen ink left out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from slide_fixtures import add_pen_marks, tissue_image, write_pyramid

from slidescan.io.slide import open_slide
from slidescan.scan.slide_geometry import mask_thumbnail
from slidescan.scan.tissue import tissue_mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def image() -> tuple[np.ndarray, np.ndarray]:
    return tissue_image(384, 512, seed=1)


def test_blobs_are_found(image: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, truth = image
    mask = tissue_mask(rgb)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert iou(mask, truth) > 0.9


def test_blank_glass_is_empty() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(240 + rng.integers(-5, 6, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass).any()
    assert not tissue_mask(np.full((50, 60, 3), 255, np.uint8)).any()
    assert tissue_mask(np.zeros((0, 0, 3), np.uint8)).shape == (0, 0)


def test_all_tissue_is_all_tissue(image: tuple[np.ndarray, np.ndarray]) -> None:
    # No glass at all: Otsu alone would split pink from purple; the clamp keeps both.
    rgb, truth = image
    pink_and_purple = np.where(truth[..., None], rgb, rgb[truth][0])
    assert tissue_mask(pink_and_purple).mean() > 0.99


def test_pen_marks_are_excluded(image: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, truth = image
    inked, ink = add_pen_marks(rgb)
    mask = tissue_mask(inked)
    assert (mask & ink).sum() < 0.02 * ink.sum()
    assert iou(mask, truth & ~ink) > 0.85


def test_black_ink_excluded_but_dark_nuclei_kept() -> None:
    rgb = np.full((100, 100, 3), 242, np.uint8)
    rgb[10:60, 10:60] = (150, 90, 170)  # tissue
    rgb[20:30, 20:30] = (45, 20, 70)  # a cluster of dark nuclei: saturated purple
    rgb[70:90, 10:90] = (30, 30, 34)  # black marker on glass
    mask = tissue_mask(rgb, min_object_px=10)
    assert mask[10:60, 10:60].all()
    assert not mask[70:90].any()


def test_small_specks_removed_and_small_holes_filled() -> None:
    rgb = np.full((100, 100, 3), 242, np.uint8)
    rgb[20:80, 20:80] = (150, 90, 170)
    rgb[45:48, 45:48] = 242  # a 9 px hole in tissue
    rgb[5:7, 90:92] = (150, 90, 170)  # a 4 px speck on glass
    mask = tissue_mask(rgb, min_object_px=20, max_hole_px=20)
    assert mask[20:80, 20:80].all()
    assert mask.sum() == 60 * 60


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        tissue_mask(np.zeros((4, 4), np.uint8))


def test_mask_thumbnail(tmp_path: Path, image: tuple[np.ndarray, np.ndarray]) -> None:
    # 4 µm/px makes the blobs 0.3-0.8 mm across, far above the physical speck size.
    rgb, truth = image
    with open_slide(write_pyramid(tmp_path / "s.tif", rgb, mpp=4.0, levels=2)) as slide:
        mask, downsample = mask_thumbnail(slide, max_size=128)
    assert mask.shape == (96, 128) and downsample == pytest.approx(4.0)
    small_truth = np.asarray(Image.fromarray(truth).resize((128, 96), Image.Resampling.BOX))
    assert iou(mask, small_truth) > 0.9


@pytest.mark.data
def test_real_slide_has_tissue(data_dir: Path) -> None:
    with open_slide(data_dir / "wsi" / "CMU-1-Small-Region.svs") as slide:
        mask, downsample = mask_thumbnail(slide, max_size=512)
    assert downsample == pytest.approx(2967 / 512)
    assert mask.shape == (512, math.ceil(2220 / downsample))
    assert 0.15 < mask.mean() < 0.7


def test_colour_channels_match_skimage_hsv() -> None:
    # The masker's integer saturation and its hue (computed only where ink is possible) are
    # HSV as skimage defines it.
    from skimage.color import rgb2hsv

    from slidescan.scan.tissue import _hue, _saturation

    rgb = np.random.default_rng(0).integers(0, 256, (20_000, 3), dtype=np.uint8)
    rgb[:4] = [[0, 0, 0], [255, 255, 255], [7, 7, 7], [0, 0, 200]]  # black, white, grey, blue
    reference = rgb2hsv(rgb[None].astype(np.float64) / 255.0)[0]
    high, low = rgb.max(axis=1), rgb.min(axis=1)
    np.testing.assert_allclose(_saturation(high, high - low), reference[:, 1], atol=1e-6)
    np.testing.assert_allclose(_hue(rgb, high, high - low), reference[:, 0], atol=1e-6)


def test_only_uint8_rgb_is_accepted() -> None:
    with pytest.raises(ValueError, match="uint8"):
        tissue_mask(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize(
    "colour, is_tissue",
    [
        ((255, 0, 0), False),  # paint / marker red
        ((255, 255, 0), False),  # yellow
        ((255, 140, 0), False),  # orange
        ((230, 150, 200), True),  # eosin pink
        ((240, 110, 190), True),  # strong eosin
        ((120, 60, 160), True),  # haematoxylin purple
        ((60, 30, 110), True),  # dark nuclei
        ((150, 90, 50), True),  # brown pigment
        ((140, 20, 30), True),  # dark red (blood)
    ],
)
def test_colours_no_stain_makes_are_not_tissue(colour: tuple[int, int, int], is_tissue: bool):
    img = np.full((200, 200, 3), 255, np.uint8)
    img[50:150, 50:150] = colour
    assert tissue_mask(img)[60:140, 60:140].all() == is_tissue
    assert not tissue_mask(img)[:40].any()


def test_pale_tissue_beside_well_stained_tissue_is_kept() -> None:
    """A pale, faintly stained region next to a well-stained one (another lab's protocol, a thin
    section) is tissue too: the thresholds must separate tissue from glass, not pink from pink."""
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(244, 2, (240, 240, 3)), 0, 255).astype(np.uint8)
    image[40:200, 20:110] = (200, 120, 170)  # well stained: saturation 0.40
    image[40:200, 130:220] = (225, 200, 215)  # pale: saturation 0.11, optical density 0.08
    mask = tissue_mask(image)
    assert mask[40:200, 20:110].mean() > 0.95
    assert mask[40:200, 130:220].mean() > 0.95
    assert mask[:30].mean() == 0 and mask[:, 225:].mean() == 0  # glass stays out
