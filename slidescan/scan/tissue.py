"""Tissue detection on a low-resolution RGB thumbnail: which areas are worth scanning.

A pixel is tissue when it is coloured (HSV saturation above an Otsu threshold, clamped to a
range typical of H&E) or dense enough (optical density above its own Otsu threshold, clamped),
not near-white glass (optical density floor), and not a pen mark
(green/cyan/blue hues or very saturated blue that H&E pink/purple never reaches, or near-black).
Small specks are removed and small holes (fat, lumens, cracks) filled.
"""

from __future__ import annotations

import numpy as np
from skimage import filters, measure, morphology

# Recorded in every report's settings: a changed mask changes which tiles are scanned.
# 2: thresholds from all pixels, glass included, and optical density as a second cue (issue 19).
TISSUE_MASK_VERSION = 2
# Otsu on saturation splits tissue from glass; clamping keeps it sane on all-glass images
# (threshold would land in noise) and all-tissue images (it would split pink from purple).
SATURATION_RANGE = (0.05, 0.20)
# Mean optical density below this is glass, however coloured (faint colour casts on glass).
MIN_OPTICAL_DENSITY = 0.05
# Both Otsu thresholds are taken over every non-ink pixel, glass included: over tissue alone
# (as in version 1) saturation split pink from purple and dropped pale or faintly stained
# tissue. Density keeps pale tissue whose colour is washed out (benchmarks/tissue_recall.py).
OD_RANGE = (0.06, 0.15)
# Dark *and* grey is black ink, slide edge or a shadow; dark nuclei stay saturated purple.
MAX_DARK_VALUE = 0.25
MAX_DARK_SATURATION = 0.35
# H&E stains sit at hue ~0.7-1.0 (purple to pink) plus ~0-0.1 (red, brown pigment);
# green and cyan are always ink. Blue overlaps haematoxylin, so only intense blue is ink.
GREEN_HUES = (0.17, 0.50)
GREEN_MIN_SATURATION = 0.25
BLUE_HUES = (0.50, 0.68)
BLUE_MIN_SATURATION = 0.60
# Yellow and orange are neither stain (brown pigment is darker and duller); vivid, bright colour of
# any hue is paint, a label or a marker: H&E never reaches this saturation at this brightness.
YELLOW_HUES = (0.11, 0.17)
YELLOW_MIN_SATURATION = 0.35
VIVID_SATURATION = 0.9
VIVID_MIN_VALUE = 0.4
# Pen strokes have antialiased, less saturated rims; grow the ink mask to swallow them.
# Ink specks smaller than the smallest kept object are stain noise, not pen strokes.
INK_DILATION_PX = 2
# Defaults relative to the image area when no physical size is known.
_MIN_OBJECT_FRACTION = 5e-5
_MAX_HOLE_FRACTION = 2e-4
# Optical density of one 8-bit channel value (0 read as 1: no infinite density).
_OD_LUT = -np.log10(np.maximum(np.arange(256), 1) / 255.0).astype(np.float32)
# Physical defaults (see mask_size_limits).
MIN_OBJECT_UM = 60.0  # side of the smallest kept fragment
MAX_HOLE_UM = 120.0  # side of the largest filled hole


def tissue_mask(
    rgb: np.ndarray, *, min_object_px: int | None = None, max_hole_px: int | None = None
) -> np.ndarray:
    """Boolean tissue mask of an (H, W, 3) uint8 RGB image; white glass, pen ink and colours that
    no H&E stain makes (yellow, orange, vivid paint of any hue) excluded.

    ``min_object_px``: connected regions smaller than this are dropped; ``max_hole_px``: holes
    up to this area are filled. Both default to small fractions of the image area.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got {rgb.dtype}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        return np.zeros((h, w), bool)
    if min_object_px is None:
        min_object_px = max(4, round(_MIN_OBJECT_FRACTION * h * w))
    if max_hole_px is None:
        max_hole_px = max(4, round(_MAX_HOLE_FRACTION * h * w))

    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    delta = high - np.minimum(np.minimum(r, g), b)
    sat = _saturation(high, delta)
    ink = _ink(rgb, high, delta, sat, min_object_px)
    od = (_OD_LUT[r] + _OD_LUT[g] + _OD_LUT[b]) / np.float32(3.0)
    candidate = (od > MIN_OPTICAL_DENSITY) & ~ink

    threshold = _saturation_threshold(sat[~ink])
    od_threshold = _od_threshold(od[~ink])
    mask = candidate & ((sat > threshold) | (od > od_threshold))
    mask = _drop_small_objects(mask, min_object_px)
    # Filling must not put back ink that sat inside tissue.
    return _fill_small_holes(mask, max_hole_px) & ~ink


def mask_size_limits(um_per_px: float) -> tuple[int, int]:
    """(smallest object kept, largest hole filled) in mask pixels at ``um_per_px``."""
    min_object_px = max(1, round((MIN_OBJECT_UM / um_per_px) ** 2))
    max_hole_px = max(1, round((MAX_HOLE_UM / um_per_px) ** 2))
    return min_object_px, max_hole_px


def _saturation(high: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """HSV saturation (max − min) / max as float32, 0 on black."""
    return delta.astype(np.float32) / np.maximum(high, 1).astype(np.float32)


def _hue(rgb: np.ndarray, high: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 1) of the given pixels (N×3 uint8 with their max and max − min)."""
    r, g, b = (rgb[:, k].astype(np.float32) for k in range(3))
    d = np.maximum(delta, 1).astype(np.float32)
    hue = np.where(
        high == rgb[:, 0],
        (g - b) / d,
        np.where(high == rgb[:, 1], 2.0 + (b - r) / d, 4.0 + (r - g) / d),
    )
    return np.where(delta > 0, (hue / 6.0) % 1.0, 0.0).astype(np.float32)


def _ink(
    rgb: np.ndarray, high: np.ndarray, delta: np.ndarray, sat: np.ndarray, min_px: int
) -> np.ndarray:
    # Only saturated pixels can be coloured ink, and hue is the costly channel: compute it there.
    coloured = sat > min(GREEN_MIN_SATURATION, BLUE_MIN_SATURATION)
    hue = _hue(rgb[coloured], high[coloured], delta[coloured])
    s = sat[coloured]
    green = (hue >= GREEN_HUES[0]) & (hue < GREEN_HUES[1]) & (s > GREEN_MIN_SATURATION)
    blue = (hue >= BLUE_HUES[0]) & (hue < BLUE_HUES[1]) & (s > BLUE_MIN_SATURATION)
    yellow = (hue >= YELLOW_HUES[0]) & (hue < YELLOW_HUES[1]) & (s > YELLOW_MIN_SATURATION)
    vivid = (s > VIVID_SATURATION) & (high[coloured] > VIVID_MIN_VALUE * 255)
    ink = np.zeros(sat.shape, bool)
    ink[coloured] = green | blue | yellow | vivid
    ink |= (high < MAX_DARK_VALUE * 255) & (sat < MAX_DARK_SATURATION)  # black
    ink = _drop_small_objects(ink, min_px)
    if INK_DILATION_PX > 0 and ink.any():
        ink = morphology.dilation(ink, morphology.disk(INK_DILATION_PX))
    return ink


def _drop_small_objects(mask: np.ndarray, min_px: int) -> np.ndarray:
    return morphology.remove_small_objects(mask, max_size=min_px - 1, connectivity=2)


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    labels = measure.label(~mask, connectivity=1)
    sizes = np.bincount(labels.ravel())
    fill = sizes <= max_px
    fill[0] = False
    # Background touching the image border is open glass, never a hole.
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    fill[border] = False
    return mask | fill[labels]


def _od_threshold(od: np.ndarray) -> float:
    low, high = OD_RANGE
    if od.size < 2 or float(od.max() - od.min()) < 1e-3:
        return high
    return float(np.clip(filters.threshold_otsu(od), low, high))


def _saturation_threshold(sat: np.ndarray) -> float:
    low, high = SATURATION_RANGE
    # Otsu is undefined on a (near-)constant image such as blank glass.
    if sat.size < 2 or float(sat.max() - sat.min()) < 1e-3:
        return high
    return float(np.clip(filters.threshold_otsu(sat), low, high))
