"""Write a large pyramidal TIFF slide built from real PCam tissue, for scan benchmarks.

    python benchmarks/make_mosaic_slide.py /tmp/mosaic-30000.tif --size 30000 [--seed 0]

Level 0 is a grid of real 96×96 PCam patches (a seeded random mix of both classes) inside a few
large irregular elliptical tissue regions covering about ``tissue_fraction`` of the slide, on white
glass elsewhere. It is written as JPEG tiles (YCbCr 4:2:0, quality 90) at ``mpp`` µm/px (the PCam
resolution, so a scan reads level 0 without resampling), plus reduced levels at downsamples 4, 16
and 64 (NewSubfileType 1) so OpenSlide reads a cheap thumbnail. Resolution tags in centimetres make
OpenSlide report ``openslide.mpp-x``.

Memory stays bounded whatever the size: level 0 is generated one tile row at a time and handed to
tifffile as an iterator of tiles; the reduced levels are box-averaged from those same rows, spooled
to raw temporary files beside the output, and written from there a tile row at a time. The
parameters are stored in the ImageDescription, and an existing file with the same parameters is
reused instead of rewritten. Needs ``imagecodecs`` (JPEG) and the real data in
``benchmarks/data_paths.py: shared_data_dir()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from data_paths import shared_data_dir
from PIL import Image

TILE = 256  # TIFF tile side; also the height of one generated level-0 row of tiles
CELL = 96  # PCam patch side
DOWNSAMPLES = (4, 16, 64)  # reduced levels (each must divide TILE)
MIN_LEVEL_PX = 128  # a reduced level smaller than this (short side) is not written
GLASS = 244  # grey value of the empty glass
JPEG_QUALITY = 90
POOL = 1024  # real patches held in memory (half per class)
MASK_STEP = 8  # the tissue outline is evaluated every MASK_STEP px (sub-cell detail)
ENCODE_BUFFER = 1 << 26  # tifffile reads this many bytes of tiles ahead to encode in threads
FORMAT = "slidescan-mosaic-v1"


def patch_pool(seed: int, n: int = POOL, data: Path | None = None) -> np.ndarray:
    """``n`` real PCam training patches (uint8 n×96×96×3), half of each class, seeded choice."""
    root = (data or shared_data_dir() / "pcam-jpeg") / "train"
    rng = np.random.default_rng(seed)
    files: list[Path] = []
    for label in ("0", "1"):
        folder = root / label
        names = sorted(f for f in os.listdir(folder) if f.endswith(".jpg"))
        if not names:
            raise FileNotFoundError(f"no PCam patches in {folder}")
        picks = rng.choice(len(names), size=min(n // 2, len(names)), replace=False)
        files.extend(folder / names[i] for i in sorted(picks))
    pool = np.empty((len(files), CELL, CELL, 3), np.uint8)
    for k, f in enumerate(files):
        with Image.open(f) as im:
            pool[k] = np.asarray(im.convert("RGB"))
    return pool


class TissueShape:
    """A few overlapping irregular ellipses; ``inside(y, x)`` in relative slide coordinates."""

    def __init__(self, seed: int, fraction: float) -> None:
        rng = np.random.default_rng(seed + 1)
        n = int(rng.integers(3, 6))
        self.centres = rng.uniform(0.25, 0.75, (n, 2))
        self.radii = rng.uniform(0.12, 0.3, (n, 2))
        self.angles = rng.uniform(0, math.pi, n)
        k = np.arange(1, 7)
        self.harm_amp = rng.uniform(0.0, 0.12, (n, len(k))) / k  # wobbly outline
        self.harm_phase = rng.uniform(0, 2 * math.pi, (n, len(k)))
        self.scale = self._fit_scale(fraction)

    def inside(self, y: np.ndarray, x: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Boolean mask for the outer product of relative row coords ``y`` and col coords ``x``."""
        s = self.scale if scale is None else scale
        yy, xx = np.meshgrid(y, x, indexing="ij", sparse=True)
        out = np.zeros((len(y), len(x)), bool)
        k = np.arange(1, self.harm_amp.shape[1] + 1)
        for (cy, cx), (ry, rx), a, amp, ph in zip(
            self.centres, self.radii, self.angles, self.harm_amp, self.harm_phase, strict=True
        ):
            dy, dx = yy - cy, xx - cx
            u = (dx * math.cos(a) + dy * math.sin(a)) / (rx * s)
            v = (-dx * math.sin(a) + dy * math.cos(a)) / (ry * s)
            theta = np.arctan2(v, u)[..., None]
            edge = 1.0 + (amp * np.cos(k * theta + ph)).sum(-1)
            out |= u * u + v * v < edge * edge
        return out

    def _fit_scale(self, fraction: float, n: int = 256) -> float:
        """Bisect the common size factor so the regions cover ``fraction`` of the slide."""
        grid = (np.arange(n) + 0.5) / n
        lo, hi = 0.0, 4.0
        for _ in range(25):
            mid = (lo + hi) / 2
            if self.inside(grid, grid, mid).mean() < fraction:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2


def _level0_rows(
    size: int, width_pad: int, pool: np.ndarray, choice: np.ndarray, shape: TissueShape
) -> Iterator[np.ndarray]:
    """Level 0 as successive TILE×width_pad×3 rows of tiles (glass beyond the slide)."""
    cols_cells = choice.shape[1]
    xs = (np.arange(0, width_pad, MASK_STEP) + MASK_STEP / 2) / size
    for y0 in range(0, size, TILE):
        rows = np.full((TILE, width_pad, 3), GLASS, np.uint8)
        r0, r1 = y0 // CELL, min((y0 + TILE - 1) // CELL, choice.shape[0] - 1)
        # Patches of the cell rows crossing this band, laid side by side: (96·k)×(96·cols)×3.
        band = pool[choice[r0 : r1 + 1]].transpose(0, 2, 1, 3, 4)
        band = band.reshape((r1 - r0 + 1) * CELL, cols_cells * CELL, 3)
        top = y0 - r0 * CELL
        h = min(TILE, size - y0, band.shape[0] - top)
        w = min(size, band.shape[1])
        tissue = band[top : top + h, :w]
        ys = (np.arange(y0, y0 + h, MASK_STEP) + MASK_STEP / 2) / size
        mask = shape.inside(ys, xs[: -(-w // MASK_STEP)])
        mask = np.repeat(np.repeat(mask, MASK_STEP, 0), MASK_STEP, 1)[:h, :w, None]
        rows[:h, :w] = np.where(mask, tissue, rows[:h, :w])
        yield rows


def _tiles(rows: Iterator[np.ndarray], width: int) -> Iterator[np.ndarray]:
    """Split rows of tiles into TILE×TILE tiles, row-major, over ``width`` px."""
    for row in rows:
        for x0 in range(0, width, TILE):
            yield row[:, x0 : x0 + TILE]


def _reduce(img: np.ndarray, factor: int) -> np.ndarray:
    """Box average by ``factor`` as float32 (sides must be divisible; no full-size float copy)."""
    h, w = img.shape[:2]
    blocks = img.reshape(h // factor, factor, w // factor, factor, 3)
    total = blocks.sum(axis=(1, 3), dtype=np.float32 if img.dtype == np.float32 else np.uint32)
    return total.astype(np.float32) / (factor * factor)


def _spool(
    rows: Iterator[np.ndarray], files: list[Any], factors: tuple[int, ...]
) -> Iterator[np.ndarray]:
    """Pass rows through while appending their successive reductions to raw files."""
    for row in rows:
        level = row
        for f, factor in zip(files, factors, strict=True):
            level = _reduce(level, factor)
            f.write(np.rint(level).astype(np.uint8).tobytes())
        yield row


def _raw_rows(path: Path, stored_width: int, side: int) -> Iterator[np.ndarray]:
    """Rows of tiles of a ``side``-px level read back from a raw spool, glass beyond its end."""
    row_bytes = stored_width * 3
    width = min(stored_width, side)
    with open(path, "rb") as f:
        for y0 in range(0, side, TILE):
            f.seek(y0 * row_bytes)
            data = np.frombuffer(f.read(TILE * row_bytes), np.uint8).reshape(-1, stored_width, 3)
            rows = np.full((TILE, -(-side // TILE) * TILE, 3), GLASS, np.uint8)
            rows[: min(len(data), side - y0), :width] = data[: side - y0, :width]
            yield rows


def _params(size_px: int, mpp: float, seed: int, tissue_fraction: float) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "size_px": size_px,
        "mpp": mpp,
        "seed": seed,
        "tissue_fraction": tissue_fraction,
        "tile": TILE,
        "quality": JPEG_QUALITY,
        "pool": POOL,
        "downsamples": list(DOWNSAMPLES),
    }


def _stored_params(path: Path) -> dict[str, Any] | None:
    try:
        with tifffile.TiffFile(path) as tif:
            return json.loads(tif.pages.first.description)
    except Exception:  # not ours, truncated, or no JSON description
        return None


def mosaic_name(
    size_px: int, *, mpp: float = 0.972, seed: int = 0, tissue_fraction: float = 0.5
) -> str:
    """A file name encoding the parameters, for caching slides in a work directory."""
    return f"mosaic-{size_px}px-mpp{mpp:g}-seed{seed}-tissue{tissue_fraction:g}.tif"


def make_mosaic_slide(
    path: str | Path,
    size_px: int,
    *,
    mpp: float = 0.972,
    seed: int = 0,
    tissue_fraction: float = 0.5,
) -> Path:
    """Write (or reuse, if already written with the same parameters) a square mosaic slide."""
    path = Path(path)
    params = _params(size_px, mpp, seed, tissue_fraction)
    if path.is_file() and _stored_params(path) == params:
        return path
    if size_px < CELL:
        raise ValueError(f"size_px must be >= {CELL}, got {size_px}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = patch_pool(seed)
    n_cells = -(-size_px // CELL)
    choice = np.random.default_rng(seed + 2).integers(0, len(pool), (n_cells, n_cells))
    shape = TissueShape(seed, tissue_fraction)
    width_pad = -(-size_px // TILE) * TILE
    levels = [d for d in DOWNSAMPLES if size_px // d >= MIN_LEVEL_PX]
    factors = tuple(b // a for a, b in zip([1, *levels], levels, strict=False))
    tmp = path.with_name(f".{path.name}.partial")
    common: dict[str, Any] = {
        "dtype": np.uint8,
        "tile": (TILE, TILE),
        "photometric": "rgb",  # stored as YCbCr 4:2:0 JPEG, like most scanners
        "compression": "jpeg",
        "compressionargs": {"level": JPEG_QUALITY},
        "resolutionunit": "CENTIMETER",
        "metadata": None,
        "buffersize": ENCODE_BUFFER,
    }
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mosaic-") as spool_dir:
            spools = [Path(spool_dir) / f"level{d}.raw" for d in levels]
            with tifffile.TiffWriter(tmp, bigtiff=size_px > 40_000) as tif:
                with contextlib.ExitStack() as stack:
                    files = [stack.enter_context(open(p, "wb")) for p in spools]
                    rows = _level0_rows(size_px, width_pad, pool, choice, shape)
                    tif.write(
                        _tiles(_spool(rows, files, factors), width_pad),
                        shape=(size_px, size_px, 3),
                        resolution=(1e4 / mpp, 1e4 / mpp),
                        description=json.dumps(params),
                        **common,
                    )
                for d, spool in zip(levels, spools, strict=True):
                    side = -(-size_px // d)
                    ppcm = 1e4 / (mpp * size_px / side)
                    tif.write(
                        _tiles(_raw_rows(spool, width_pad // d, side), side),
                        shape=(side, side, 3),
                        resolution=(ppcm, ppcm),
                        subfiletype=1,
                        **common,
                    )
                    spool.unlink()  # free the disk as soon as the level is written
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output .tif")
    parser.add_argument("--size", type=int, default=30_000, help="side in pixels (square)")
    parser.add_argument("--mpp", type=float, default=0.972, help="µm per pixel at level 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tissue-fraction", type=float, default=0.5)
    args = parser.parse_args()
    path = make_mosaic_slide(
        args.out, args.size, mpp=args.mpp, seed=args.seed, tissue_fraction=args.tissue_fraction
    )
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
