"""The review page's picture of a slide when no overlay was asked for: its heatmap alone, cropped
to the scanned tissue and coloured as the overlay is. Cheap (the zarr only, never the slide), so
every finished slide gets one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from slidescan.io.atomic import atomic_write
from slidescan.io.heatmap import read_heatmap

THUMBNAIL_PX = 160  # the longer side
GLASS = (246, 247, 249)
TISSUE = (214, 205, 224)  # scanned tissue, probability 0: a pale H&E lilac
TUMOUR = (226, 74, 40)  # probability 1


def write_heatmap_thumbnail(heatmap: Path, out_png: Path, size: int = THUMBNAIL_PX) -> None:
    """``out_png``: ``heatmap``'s tissue cells coloured from lilac (0) to red (1), glass pale."""
    probability, tissue, _ = read_heatmap(heatmap)
    rows, cols = np.nonzero(tissue)
    if rows.size:  # crop to the tissue, one cell of margin
        r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, tissue.shape[0])
        c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, tissue.shape[1])
        probability, tissue = probability[r0:r1, c0:c1], tissue[r0:r1, c0:c1]
    p = np.nan_to_num(probability, nan=0.0)[..., None]
    colour = (1 - p) * np.asarray(TISSUE) + p * np.asarray(TUMOUR)
    rgb = np.where(tissue[..., None], colour, np.asarray(GLASS)).astype(np.uint8)
    image = Image.fromarray(rgb)
    scale = size / max(image.size)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(shape, Image.Resampling.NEAREST)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_png) as tmp:
        image.save(tmp, format="PNG")
