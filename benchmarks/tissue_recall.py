"""Tissue-mask recall under slide-wide colour shifts: does the masker keep pale and faint tissue?

    python benchmarks/tissue_recall.py [--slides 4] [--cells 60]

Mosaic slides of real PatchCamelyon ``valid`` patches inside an irregular elliptical tissue
region on glass (grey 244 with sensor noise), shifted as a whole, as another lab's stain or
scanner would shift it: paler (haematoxylin and eosin concentrations × (1 − s)), washed out
(saturation × (1 − s)), brighter (+ s on RGB in [0, 1]). The masker runs as a scan runs it (on a
thumbnail, cells kept at ≥ 25 % tissue); recall is the share of the tissue cells kept, relative to
the same slide unshifted, and the glass cells kept are counted too.
"""

from __future__ import annotations

import argparse

import numpy as np
from data_paths import shared_data_dir
from lesion_mosaics import load_patches
from mosaic_slides import CELL
from PIL import Image
from skimage.color import hed2rgb, hsv2rgb, rgb2hed, rgb2hsv

from slidescan.scan.tiling import make_grid, tissue_fraction
from slidescan.scan.tissue import mask_size_limits, tissue_mask

MPP = 0.972
DOWNSAMPLE = 8  # the scan's thumbnail of such a slide is about this much smaller
GLASS = 244


def slide(
    patches: np.ndarray, cells: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, truth (cells, cells) bool of tissue cells)."""
    yy, xx = np.mgrid[:cells, :cells] + 0.5
    cy, cx = cells / 2 + rng.uniform(-3, 3, 2)
    ry, rx = cells * rng.uniform(0.3, 0.45, 2)
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.12 * np.sin(3 * angle + rng.uniform(0, 6.3))
    truth = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= wobble**2
    image = np.clip(rng.normal(GLASS, 2.0, (cells * CELL, cells * CELL, 3)), 0, 255).astype(
        np.uint8
    )
    for r, c in zip(*np.nonzero(truth), strict=True):
        image[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = patches[
            rng.integers(len(patches))
        ]
    return image, truth


def pale(x: np.ndarray, s: float) -> np.ndarray:
    return hed2rgb(rgb2hed(x) * (1 - s))


def washed_out(x: np.ndarray, s: float) -> np.ndarray:
    hsv = rgb2hsv(x)
    hsv[..., 1] *= 1 - s
    return hsv2rgb(hsv)


def brighter(x: np.ndarray, s: float) -> np.ndarray:
    return x + s


SHIFTS = {"pale": (pale, (0.2, 0.4, 0.6)), "washed out": (washed_out, (0.2, 0.4, 0.6)),
          "brighter": (brighter, (0.05, 0.1, 0.15))}  # fmt: skip


def kept(thumb: np.ndarray, cells: int) -> np.ndarray:
    """Cells a scan would keep (≥ 25 % tissue in the thumbnail's mask)."""
    min_object, max_hole = mask_size_limits(MPP * DOWNSAMPLE)
    mask = tissue_mask(thumb, min_object_px=min_object, max_hole_px=max_hole)
    grid = make_grid((cells * CELL, cells * CELL), MPP, MPP, CELL, CELL)
    return tissue_fraction(mask, DOWNSAMPLE, grid) >= 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--cells", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    patches, _ = load_patches(shared_data_dir() / "pcam-jpeg" / "valid")
    rng = np.random.default_rng(args.seed)
    rows: dict[tuple[str, float], list[tuple[float, int]]] = {}
    coverage: dict[tuple[str, float], list[float]] = {}
    for _ in range(args.slides):
        image, truth = slide(patches, args.cells, rng)
        side = args.cells * CELL // DOWNSAMPLE
        thumb = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BOX))
        base = kept(thumb, args.cells)
        base_tissue = (base & truth).sum()
        rows.setdefault(("unshifted", 0.0), []).append((1.0, int((base & ~truth).sum())))
        coverage.setdefault(("unshifted", 0.0), []).append(float(base_tissue / truth.sum()))
        for name, (fn, strengths) in SHIFTS.items():
            for s in strengths:
                shifted = np.clip(fn(thumb.astype(np.float64) / 255.0, s), 0, 1)
                out = kept((shifted * 255 + 0.5).astype(np.uint8), args.cells)
                rows.setdefault((name, s), []).append(
                    (float((out & truth).sum() / base_tissue), int((out & ~truth).sum()))
                )
                coverage.setdefault((name, s), []).append(float((out & truth).sum() / truth.sum()))
    print(f"{args.slides} slides of {args.cells}×{args.cells} cells; tissue cells kept relative to "
          f"the unshifted slide (min over slides), glass cells kept (max)\n")  # fmt: skip
    print("| shift | strength | of unshifted (mean) | (min) | of all tissue | glass cells kept |")
    print("|---|---:|---:|---:|---:|---:|")
    for (name, s), values in rows.items():
        recall = [v for v, _ in values]
        print(f"| {name} | {s} | {np.mean(recall):.1%} | {min(recall):.1%} | "
              f"{np.mean(coverage[name, s]):.1%} | {max(g for _, g in values)} |")  # fmt: skip


if __name__ == "__main__":
    main()
