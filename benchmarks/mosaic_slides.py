"""Synthetic slides with known lesions, built from labelled patches: a ground truth for slide calls.

A mosaic is a grid of real 96×96 patches at the model's resolution (one patch per heatmap cell at
stride 96), each under a random flip/rotation: normal patches everywhere, tumour patches inside a
disc of a chosen diameter (a lesion). With the truth known, a slide call can be checked for
false positives (all-normal mosaics), detection and measured lesion size.

The truth disc holds the cells whose centres lie within ``diameter/2 − cell/2`` of its centre, so
that a perfect heatmap measures the lesion at ``diameter`` (``slide_call.label_lesions`` adds one
cell to the centre-to-centre extent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidescan.engine.weights import PCAM_MPP

CELL = 96


@dataclass(frozen=True)
class MosaicLayout:
    """Which cells are tumour (``truth``), and the lesion's intended diameter and centre."""

    truth: np.ndarray  # (rows, cols) bool
    diameter_mm: float
    centre: tuple[float, float] | None  # (row, col) in cells


def cell_mm(mpp: float = PCAM_MPP, stride: int = CELL) -> float:
    """Side of one heatmap cell in mm."""
    return stride * mpp / 1000.0


def lesion_layout(
    cells: int, diameter_mm: float, rng: np.random.Generator, *, mpp: float = PCAM_MPP
) -> MosaicLayout:
    """A ``cells``×``cells`` grid with one disc lesion of ``diameter_mm`` (0: all normal),
    placed at random wholly inside the grid."""
    truth = np.zeros((cells, cells), dtype=bool)
    if diameter_mm <= 0:
        return MosaicLayout(truth, 0.0, None)
    size = cell_mm(mpp)
    radius = max(diameter_mm / size / 2 - 0.5, 0.0)  # centre-to-centre, in cells
    margin = math.ceil(radius) + 1
    if 2 * margin >= cells:
        raise ValueError(f"a {diameter_mm} mm lesion does not fit in {cells}×{cells} cells")
    cy, cx = rng.uniform(margin, cells - 1 - margin, size=2)
    rows, cols = np.mgrid[:cells, :cells]
    truth = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2 + 1e-9
    if not truth.any():  # smaller than a cell: the nearest cell
        truth[round(cy), round(cx)] = True
    return MosaicLayout(truth, float(diameter_mm), (float(cy), float(cx)))


def fill_cells(
    truth: np.ndarray, normal: np.ndarray, tumour: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw, for each cell, an index into ``normal`` or ``tumour`` (its class) and one of the 8
    flips/rotations: (index (rows, cols), transform (rows, cols))."""
    index = np.where(
        truth,
        rng.integers(0, len(tumour), truth.shape),
        rng.integers(0, len(normal), truth.shape),
    )
    return index, rng.integers(0, 8, truth.shape)


def probability_mosaic(
    truth: np.ndarray, normal_probs: np.ndarray, tumour_probs: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A heatmap as the model would produce it on a mosaic, from per-patch probabilities
    ``(8, n)`` under the 8 flips/rotations (no pixels: fast enough for many slides)."""
    index, k = fill_cells(truth, normal_probs[0], tumour_probs[0], rng)
    return np.where(truth, tumour_probs[k, index], normal_probs[k, index])


def image_mosaic(
    truth: np.ndarray, normal: np.ndarray, tumour: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The RGB mosaic (rows·96, cols·96, 3) from uint8 patch stacks (n, 96, 96, 3)."""
    index, k = fill_cells(truth, normal, tumour, rng)
    rows, cols = truth.shape
    out = np.empty((rows * CELL, cols * CELL, 3), dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            patch = (tumour if truth[r, c] else normal)[index[r, c]]
            t = int(k[r, c])
            patch = np.rot90(patch, t % 4)
            if t >= 4:
                patch = patch[:, ::-1]
            out[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = patch
    return out


def write_slide(path: Path, image: np.ndarray, *, mpp: float = PCAM_MPP, quality: int = 90) -> Path:
    """A tiled pyramidal TIFF (JPEG tiles of ``quality``, reduced levels ×4 and ×16) that slide
    readers open at ``mpp`` µm/px."""
    import tifffile
    from PIL import Image

    per_cm = 1e4 / mpp
    with tifffile.TiffWriter(path) as tif:
        level = image
        for i, factor in enumerate((1, 4, 16)):
            if i:
                h, w = image.shape[:2]
                level = np.asarray(Image.fromarray(image).resize((w // factor, h // factor)))
                if min(level.shape[:2]) < 64:
                    break
            tif.write(
                level, tile=(256, 256), photometric="rgb", compression="jpeg",
                compressionargs={"level": quality}, subfiletype=1 if i else 0, metadata=None,
                resolution=(per_cm / factor, per_cm / factor), resolutionunit="CENTIMETER",
            )  # fmt: skip
    return path
