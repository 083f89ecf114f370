"""Slide-level ground truth: false positives, detections and lesion sizes on mosaic slides.

    python benchmarks/lesion_mosaics.py [--weights W] [--data ../shared/data/pcam-jpeg/valid] \
        [--cells 100] [--slides 50] [--scan 3]

Builds mosaic slides (``mosaic_slides.py``) from a labelled patch folder (class folders 0/1):
all-normal, one 2.2 mm macrometastasis and one 0.65 mm micrometastasis, ``--cells`` cells a side
(100 × 93 µm ≈ 9 mm). For each kind it reports the share called positive, the category found and
the measured diameter of the largest lesion against the truth.

Two modes, both printed:

- **heatmap mosaics** (``--slides`` per kind): cells take the model's probability for a random
  patch under a random flip/rotation (every patch is scored under all 8 once), then the slide call
  runs on that grid; fast enough for hundreds of slides, and for the false-positive rate by
  tissue area;
- **scanned mosaics** (``--scan`` per kind): the mosaic is written as a pyramidal TIFF and goes
  through ``slidescan run``'s whole pipeline (tissue mask, tiling, int8 engine on CPUs,
  distribution check).

Use patches the model was neither trained nor calibrated on (the default: PatchCamelyon valid).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from data_paths import note_if_in_sample, shared_data_dir
from mosaic_slides import (
    cell_mm,
    image_mosaic,
    lesion_layout,
    probability_mosaic,
    write_slide,
)
from torch.utils.data import DataLoader

from slidescan.engine.inference import Normalizer
from slidescan.engine.weights import load_weights
from slidescan.io.patches import open_patch_dataset
from slidescan.scan.scan_result import ScanOptions
from slidescan.scan.scanner import Scanner
from slidescan.scan.slide_call import SEED_CELLS, call_slide
from slidescan.train.calibration import dihedral_probs

KINDS = {"normal": 0.0, "micrometastasis 0.65 mm": 0.65, "macrometastasis 2.2 mm": 2.2}
EXPECTED = {0.0: "negative", 0.65: "micrometastasis", 2.2: "macrometastasis"}


def load_patches(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 96, 96, 3) patches and their labels from class folders."""
    data = open_patch_dataset(folder)
    loader = DataLoader(data, batch_size=512, num_workers=2)
    images = torch.cat([x for x, _ in loader]).permute(0, 2, 3, 1).numpy()
    return images, np.asarray(data.labels)


def summarise(calls: list, diameter: float) -> str:
    positive = np.mean([c.positive for c in calls])
    right = np.mean([c.category == EXPECTED[diameter] for c in calls])
    sizes = np.array([c.largest_diameter_mm for c in calls if c.lesions])
    size = f"{sizes.mean():.2f} ± {sizes.std():.2f} mm" if sizes.size else "—"
    return (
        f"called positive {positive:.0%} | category right {right:.0%} | "
        f"largest lesion {size} (truth {diameter:g} mm)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "pcam-jpeg" / "valid")
    parser.add_argument("--cells", type=int, default=100, help="mosaic side in cells")
    parser.add_argument("--slides", type=int, default=200, help="heatmap mosaics per kind")
    parser.add_argument("--scan", type=int, default=3, help="scanned mosaics per kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    loaded = load_weights(args.weights)
    card = loaded.card
    patches, labels = load_patches(args.data)
    normal, tumour = patches[labels == 0], patches[labels == 1]
    note_if_in_sample(card.training, args.data)
    print(
        f"{card.model} ({loaded.sha256[:12]}); {args.data}: {len(normal)} normal, "
        f"{len(tumour)} tumour patches; {args.cells}×{args.cells}-cell mosaics\n"
    )

    start = time.perf_counter()
    model = loaded.model.eval()
    normalizer = Normalizer(card, torch.device("cpu"))
    ds = torch.utils.data.TensorDataset(
        torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
    )
    _, probs = dihedral_probs(model, ds, normalizer)
    p_normal, p_tumour = probs[:, labels == 0], probs[:, labels == 1]
    seed_t, extent_t = card.lesion_thresholds()
    thresholds = {
        "seed_threshold": seed_t,
        "extent_threshold": extent_t,
        "seed_cells": SEED_CELLS,
    }
    size = cell_mm(card.mpp)
    print(
        f"scored every patch ×8 in {time.perf_counter() - start:.0f} s; seed threshold "
        f"{seed_t:.4f}, extent threshold {extent_t:.3f}\n"
    )

    print(f"## Heatmap mosaics ({args.slides} per kind)\n")
    rng = np.random.default_rng(args.seed)
    for name, diameter in KINDS.items():
        calls = []
        for _ in range(args.slides):
            layout = lesion_layout(args.cells, diameter, rng, mpp=card.mpp)
            grid = probability_mosaic(layout.truth, p_normal, p_tumour, rng)
            calls.append(call_slide(grid, cell_mm=size, **thresholds))
        print(f"- {name}: {summarise(calls, diameter)}")

    print("\nAll-normal heatmap mosaics called positive, by tissue area:\n")
    for side in (50, 71, 100, 141, 200):
        calls = [
            call_slide(
                probability_mosaic(np.zeros((side, side), bool), p_normal, p_tumour, rng),
                cell_mm=size,
                **thresholds,
            )  # fmt: skip
            for _ in range(args.slides)
        ]
        area = side * side * size * size
        rate = np.mean([c.positive for c in calls])
        print(f"- {side * side:,} cells ({area:.0f} mm²): {rate:.1%}")

    if args.scan <= 0:
        return
    print(f"\n## Scanned mosaics ({args.scan} per kind, whole pipeline)\n")
    scanner = Scanner(loaded, ScanOptions(progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        for name, diameter in KINDS.items():
            calls, flags, seconds = [], 0, 0.0
            for i in range(args.scan):
                layout = lesion_layout(args.cells, diameter, rng, mpp=card.mpp)
                image = image_mosaic(layout.truth, normal, tumour, rng)
                slide = write_slide(Path(tmp) / f"m{i}.tif", image, mpp=card.mpp)
                result = scanner.scan(slide, Path(tmp) / f"m{i}-{diameter}.zarr")
                calls.append(result.call)
                flags += result.distribution.flagged
                seconds += result.seconds
            print(
                f"- {name}: {summarise(calls, diameter)} | flagged out of distribution "
                f"{flags}/{args.scan} | {seconds / args.scan:.1f} s per slide"
            )


if __name__ == "__main__":
    main()
