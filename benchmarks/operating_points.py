"""Operating points of the lesion call: micrometastasis detection against false-positive slides.

    python benchmarks/operating_points.py [--weights W] [--slides 200] [--cells 100]

Heatmap mosaics (``mosaic_slides.probability_mosaic``, in benchmarks/) of PatchCamelyon ``valid``
patches, each scored under the 8 flips/rotations: for each seed threshold, the share of all-normal
mosaics of ``--cells``² tissue tiles called positive, and the share of 0.3–0.5 mm, 0.65 mm and
2.2 mm lesions detected (a lesion of the call covers a cell of the truth). This is how a lab
chooses its operating point; the named settings of ``slidescan run --sensitivity`` come from it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from data_paths import shared_data_dir
from lesion_mosaics import load_patches
from mosaic_slides import cell_mm, lesion_layout, probability_mosaic

from slidescan.engine.inference import Normalizer
from slidescan.engine.weights import load_weights
from slidescan.scan.slide_call import SEED_CELLS, call_slide
from slidescan.train.calibration import dihedral_probs

SEEDS = (0.9999, 0.9995, 0.999, 0.995, 0.99, 0.986, 0.98, 0.97, 0.95, 0.9)
LESIONS = {"0.3–0.5 mm": (0.3, 0.4, 0.5), "0.65 mm": (0.65,), "2.2 mm": (2.2,)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=str, default=None)
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", action="store_true", help="cells as `run --tta` scores them")
    args = parser.parse_args()
    loaded = load_weights(args.weights)
    card = loaded.card
    patches, labels = load_patches(shared_data_dir() / "pcam-jpeg" / "valid")
    ds = torch.utils.data.TensorDataset(
        torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
    )
    _, probs = dihedral_probs(loaded.model.eval(), ds, Normalizer(card, torch.device("cpu")))
    if args.tta:  # the mean over the 8 flips/rotations, whichever one the mosaic drew
        probs = np.repeat(probs.mean(0, keepdims=True), 8, axis=0)
    p_normal, p_tumour = probs[:, labels == 0], probs[:, labels == 1]
    _, extent = card.lesion_thresholds()
    size = cell_mm(card.mpp)
    rng = np.random.default_rng(args.seed)
    normals = [probability_mosaic(np.zeros((args.cells,) * 2, bool), p_normal, p_tumour, rng)
               for _ in range(args.slides)]  # fmt: skip
    lesioned = {}
    for name, diameters in LESIONS.items():
        lesioned[name] = []
        for i in range(args.slides):
            layout = lesion_layout(args.cells, diameters[i % len(diameters)], rng, mpp=card.mpp)
            grid = probability_mosaic(layout.truth, p_normal, p_tumour, rng)
            lesioned[name].append((grid, layout.truth))
    print(f"{card.model} ({loaded.sha256[:12]}), extent threshold {extent:.3f}, default seed "
          f"{card.lesion_thresholds()[0]:.4f}; {args.slides} heatmap mosaics of "
          f"{args.cells ** 2:,} tiles per row\n")  # fmt: skip
    print("| seed tiles | seed threshold | normal slides positive | " + " | ".join(LESIONS) + " |")
    print("|---:|---:|---:|" + "---:|" * len(LESIONS))
    for seed_cells, seed in [(n, s) for n in (SEED_CELLS, 2, 1) for s in SEEDS]:
        kw = {"seed_threshold": max(seed, extent), "extent_threshold": extent, "cell_mm": size,
              "seed_cells": seed_cells}  # fmt: skip
        fp = np.mean([call_slide(g, **kw).positive for g in normals])
        found = []
        for name in LESIONS:
            hits = 0
            for grid, truth in lesioned[name]:
                call = call_slide(grid, **kw)
                hits += bool((call.lesion_labels[truth] > 0).any())
            found.append(f"{hits / len(lesioned[name]):.1%}")
        print(f"| {seed_cells} | {seed} | {fp:.1%} | " + " | ".join(found) + " |")


if __name__ == "__main__":
    main()
