"""Operating points of the lesion call: micrometastasis detection against false-positive slides.

    python benchmarks/operating_points.py [--weights W] [--slides 200] [--cells 100]

Heatmap mosaics (``mosaic_slides.probability_mosaic``, in benchmarks/) of PatchCamelyon ``valid``
patches, each scored under the 8 flips/rotations: for each seed threshold, the share of all-normal
mosaics of ``--cells``² tissue tiles called positive, and the share of 0.3–0.5 mm, 0.65 mm and
2.2 mm lesions detected (a lesion of the call covers a cell of the truth). This is how a lab
chooses its operating point; the named settings of ``slidescan run --sensitivity`` come from it:
``--record high=0.98`` writes that seed threshold, with this run's figures for it, into the weights
file's card as its ``high`` operating point.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from data_paths import note_if_in_sample, shared_data_dir
from lesion_mosaics import load_patches
from mosaic_slides import cell_mm, lesion_layout, probability_mosaic

from slidescan.engine.inference import Normalizer
from slidescan.engine.weights import load_weights, save_weights, shipped_weights_path
from slidescan.scan.slide_call import SEED_CELLS, call_slide
from slidescan.train.calibration import dihedral_probs
from slidescan.vocabulary import Sensitivity

# Size bands of issue 22 (ITC, 0.2–0.5, 0.5–1, 1–2, > 2 mm) and tissue areas, for the named points.
BAND_SIZES = (0.15, 0.3, 0.4, 0.5, 0.65, 0.8, 1.5, 2.2)
AREAS = (2_500, 10_000, 40_000)
SEEDS = (0.9999, 0.9995, 0.999, 0.995, 0.99, 0.986, 0.984, 0.982, 0.98, 0.978, 0.975, 0.97, 0.95,
         0.9)  # fmt: skip
LESIONS = {"0.3–0.5 mm": (0.3, 0.4, 0.5), "0.65 mm": (0.65,), "2.2 mm": (2.2,)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=str, default=None)
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", action="store_true", help="cells as `run --tta` scores them")
    parser.add_argument("--named", action="store_true",
                        help="only the card's named operating points, by lesion size and by "
                        "tissue area")  # fmt: skip
    parser.add_argument("--record", type=str, default=None, metavar="NAME=SEED",
                        help="write this seed threshold (one of the table's, 3 seed tiles) into "
                        "the weights' card as the operating point NAME")  # fmt: skip
    args = parser.parse_args()
    record = None
    if args.record is not None:
        name, _, value = args.record.partition("=")
        named = [s.value for s in Sensitivity if s != Sensitivity.standard]
        try:
            record = (name, float(value))
        except ValueError:
            parser.error("--record takes NAME=SEED, e.g. high=0.98")
        if name not in named or record[1] not in SEEDS or args.tta or args.named:
            parser.error(f"--record needs a name of {named}, a seed of the table ({SEEDS}), "
                         "and neither --tta nor --named")  # fmt: skip
    loaded = load_weights(args.weights)
    card = loaded.card
    patches, labels = load_patches(shared_data_dir() / "pcam-jpeg" / "valid")
    note_if_in_sample(card.training, shared_data_dir() / "pcam-jpeg" / "valid")
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
    if args.named:
        named_points(card, p_normal, p_tumour, rng, args.slides)
        return
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
    recorded = {}
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
        if record is not None and (seed_cells, seed) == (SEED_CELLS, record[1]):
            recorded = {"normal_slides_positive": round(float(fp), 4),
                        **{f"found_{n}": float(f.rstrip("%")) / 100
                           for n, f in zip(LESIONS, found, strict=True)}}  # fmt: skip
    if record is not None:
        path = args.weights or shipped_weights_path()
        card.operating_points[record[0]] = {
            "seed_threshold": record[1],
            "chosen_on": f"benchmarks/operating_points.py: {args.slides} heatmap mosaics per row "
            f"of {args.cells**2:,} tiles from PatchCamelyon valid patches (slides not in "
            f"training), {SEED_CELLS} seed tiles, extent {extent:.3f}",
            "figures": recorded,
        }
        save_weights(path, loaded.model, card, int8_onnx=loaded.int8_onnx,
                     feature_reference=loaded.feature_reference)  # fmt: skip
        print(f"\nrecorded operating point {record[0]!r} (seed {record[1]}) in {path}")


def named_points(
    card: Any, p_normal: np.ndarray, p_tumour: np.ndarray, rng: np.random.Generator, slides: int
) -> None:
    """Detection by lesion size and false-positive slides by tissue area at each operating point
    the card names (``slidescan run --sensitivity``)."""
    size = cell_mm(card.mpp)
    names = ["standard", *card.operating_points]
    kws = {}
    for name in names:
        seed, extent = card.lesion_thresholds(sensitivity=name)
        kws[name] = {"seed_threshold": seed, "extent_threshold": extent, "cell_mm": size,
                     "seed_cells": SEED_CELLS}  # fmt: skip
    fp = {n: [] for n in names}
    for area in AREAS:
        side = round(area**0.5)
        grids = [probability_mosaic(np.zeros((side, side), bool), p_normal, p_tumour, rng)
                 for _ in range(slides)]  # fmt: skip
        for n in names:
            fp[n].append(np.mean([call_slide(g, **kws[n]).positive for g in grids]))
    found = {n: [] for n in names}
    for diameter in BAND_SIZES:
        cases = []
        for _ in range(slides):
            layout = lesion_layout(40, diameter, rng, mpp=card.mpp)
            cases.append((probability_mosaic(layout.truth, p_normal, p_tumour, rng), layout.truth))
        for n in names:
            found[n].append(np.mean(
                [(call_slide(g, **kws[n]).lesion_labels[t] > 0).any() for g, t in cases]
            ))  # fmt: skip
    print(
        f"{slides} heatmap mosaics per cell; lesions found (a lesion of the call covers the "
        "truth) by true diameter, and normal slides called positive by tissue tiles\n"
    )
    head = [f"{d} mm" for d in BAND_SIZES] + [f"normal, {a:,} tiles" for a in AREAS]
    print("| sensitivity | seed | " + " | ".join(head) + " |")
    print("|---|---:|" + "---:|" * len(head))
    for n in names:
        cells = [f"{v:.1%}" for v in found[n]] + [f"{v:.1%}" for v in fp[n]]
        print(f"| {n} | {kws[n]['seed_threshold']:.4g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
