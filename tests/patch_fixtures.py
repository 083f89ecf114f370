"""Helpers (not tests) that write small synthetic labelled patch sets as class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def toy_patch(label: int, rng: np.random.Generator) -> np.ndarray:
    """Pale pink noisy background; tumour (1) adds dark purple blobs, normal (0) faint pink ones."""
    yy, xx = np.mgrid[0:96, 0:96]
    img = np.empty((96, 96, 3), np.float32)
    img[:] = (235, 190, 215)
    img += rng.normal(0, 12, img.shape)
    colour = (90, 40, 130) if label else (220, 140, 180)
    for _ in range(rng.integers(5, 9) if label else rng.integers(0, 3)):
        cy, cx, r = rng.uniform(10, 86), rng.uniform(10, 86), rng.uniform(6, 12)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour + rng.normal(0, 10, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_toy_set(root: Path, n_per_class: int, seed: int = 0, classes: tuple = (0, 1)) -> Path:
    """Class folders ``0/`` and ``1/`` of 96x96 PNGs."""
    rng = np.random.default_rng(seed)
    for label in classes:
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(toy_patch(label, rng)).save(folder / f"c{label}_{i:03d}.png")
    return root
