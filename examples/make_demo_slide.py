"""Build the demo slide that `slidescan demo` scans: a lymph-node-like mosaic with known metastases.

The slide is a pyramidal TIFF at 0.972 µm/px (PatchCamelyon's scale) made of real PatchCamelyon
*valid* patches (PCam is CC0; since 2026-12-06 the shipped model also trains on them):
an oval of tissue on white glass holding one obvious macrometastasis (2.2 mm across), one
micrometastasis (0.65 mm) and normal node tissue. Its truth goes next to it as JSON.

    python examples/make_demo_slide.py [--data ../shared/data] [--out slidescan/demo_data]

The output is deterministic for a given data folder and seed; the files it writes are the one
exception to "no data from ../shared/data in the repository" (issue 11).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the mosaic helpers
from data_paths import shared_data_dir  # noqa: E402
from mosaic_slides import CELL, cell_mm, image_mosaic, write_slide  # noqa: E402

SLIDE_NAME = "demo-node.tif"
TRUTH_NAME = "demo-node.truth.json"
MPP = 0.972
ROWS, COLS = 30, 44  # cells of 96 px: 2.8 mm × 4.1 mm
GLASS = 242  # grey level of the empty glass around the tissue
LESIONS = (  # (name, diameter in mm, centre (row, col) in cells)
    ("macrometastasis", 2.2, (15.0, 14.5)),
    ("micrometastasis", 0.65, (11.0, 34.0)),
)


def load_patches(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """All normal and tumour patches of an ImageFolder split, uint8 (n, 96, 96, 3) each."""
    stacks = []
    for label in ("0", "1"):
        files = sorted((folder / label).glob("*.jpg"))
        if not files:
            raise SystemExit(f"no patches in {folder / label}")
        stacks.append(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    return stacks[0], stacks[1]


def layout(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(tissue, tumour) cell masks: an irregular oval of tissue holding the two lesions."""
    rows, cols = np.mgrid[:ROWS, :COLS].astype(float)
    cy, cx = (ROWS - 1) / 2, (COLS - 1) / 2
    angle = np.arctan2(rows - cy, cols - cx)
    # A few slow bumps on the outline, so the node does not look drawn with a compass.
    wobble = 1 + sum(0.04 * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    tissue = ((rows - cy) / (ROWS / 2 - 1)) ** 2 + ((cols - cx) / (COLS / 2 - 1)) ** 2 <= wobble
    tumour = np.zeros_like(tissue)
    for _, diameter, (ly, lx) in LESIONS:
        # Cell centres within diameter/2 - cell/2 of the centre: a perfect heatmap measures
        # the lesion at its diameter (the convention of benchmarks/mosaic_slides.py).
        radius = diameter / cell_mm(MPP) / 2 - 0.5
        tumour |= (rows - ly) ** 2 + (cols - lx) ** 2 <= radius**2
    if (tumour & ~tissue).any():
        raise SystemExit("a lesion reaches outside the tissue: move it")
    return tissue, tumour


def truth_record(tumour: np.ndarray) -> dict:
    """What the demo slide holds, in the units slidescan reports."""
    lesions = []
    for name, diameter, (ly, lx) in LESIONS:
        lesions.append(
            {
                "category": name,
                "diameter_mm": diameter,
                # Cell (r, c) covers level-0 pixels [96c, 96c + 96) × [96r, 96r + 96).
                "centre_level0": [round(CELL * (lx + 0.5), 1), round(CELL * (ly + 0.5), 1)],
            }
        )
    return {
        "slide": SLIDE_NAME,
        "mpp": MPP,
        "size_px": [COLS * CELL, ROWS * CELL],
        "call": {"positive": True, "category": "macrometastasis"},
        "lesions": lesions,
        "tumour_cells": int(tumour.sum()),
        "source": "PatchCamelyon (PCam) valid split, CC0; built by examples/make_demo_slide.py",
        "notice": "Research use only. A mosaic of patches, not a real lymph node.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument("--out", type=Path, default=Path("slidescan/demo_data"))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--quality", type=int, default=70, help="JPEG quality of the tiles")
    args = parser.parse_args()

    data = args.data or shared_data_dir()
    normal, tumour_patches = load_patches(data / "pcam-jpeg" / "valid")
    rng = np.random.default_rng(args.seed)
    tissue, tumour = layout(rng)
    image = image_mosaic(tumour, normal, tumour_patches, rng)
    glass = np.kron(~tissue, np.ones((CELL, CELL), dtype=bool))
    image[glass] = GLASS
    args.out.mkdir(parents=True, exist_ok=True)
    slide = write_slide(args.out / SLIDE_NAME, image, mpp=MPP, quality=args.quality)
    (args.out / TRUTH_NAME).write_text(json.dumps(truth_record(tumour), indent=2) + "\n")
    print(
        f"{slide}: {slide.stat().st_size / 1e6:.2f} MB, {int(tissue.sum())} tissue cells, "
        f"{int(tumour.sum())} tumour cells"
    )


if __name__ == "__main__":
    main()
