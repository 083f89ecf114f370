"""Helpers (not tests) that write small synthetic slides OpenSlide reads as generic TIFF.

Images are white "glass" with pink/purple "tissue" blobs; pyramids are tiled TIFFs whose
reduced levels are marked as such (NewSubfileType 1), which OpenSlide needs to see them as
levels. Resolution tags in centimetres make OpenSlide report ``openslide.mpp-x``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw

GLASS = (242, 240, 244)
PINK = (226, 140, 186)
PURPLE = (132, 78, 160)
BLUE_INK = (25, 55, 190)
GREEN_INK = (40, 150, 70)


def tissue_image(
    height: int = 1536, width: int = 2048, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, truth): textured pink/purple ellipses on slightly noisy glass, and their mask."""
    rng = np.random.default_rng(seed)
    truth_img = Image.new("L", (width, height), 0)
    colour_img = Image.new("RGB", (width, height), GLASS)
    draw_t, draw_c = ImageDraw.Draw(truth_img), ImageDraw.Draw(colour_img)
    blobs = [
        (0.15, 0.2, 0.35, 0.6, PINK),
        (0.5, 0.3, 0.8, 0.75, PURPLE),
        (0.55, 0.05, 0.7, 0.2, PINK),
    ]
    for x0, y0, x1, y1, colour in blobs:
        box = (x0 * width, y0 * height, x1 * width, y1 * height)
        draw_t.ellipse(box, fill=1)
        draw_c.ellipse(box, fill=colour)
    rgb = np.asarray(colour_img).astype(np.int16)
    truth = np.asarray(truth_img).astype(bool)
    # Stain texture inside tissue (nuclei-like dark speckle), sensor noise everywhere.
    speckle = (rng.random((height, width)) < 0.05) & truth
    rgb[speckle] -= np.array([60, 40, 30], np.int16)
    rgb += rng.integers(-6, 7, size=rgb.shape, dtype=np.int16)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


def add_pen_marks(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, ink): a thick blue stroke across glass and tissue, and a green one on glass."""
    height, width = rgb.shape[:2]
    img = Image.fromarray(rgb)
    ink_img = Image.new("L", (width, height), 0)
    thick = max(6, width // 100)
    for colour, line in (
        (BLUE_INK, (0.05 * width, 0.85 * height, 0.6 * width, 0.45 * height)),
        (GREEN_INK, (0.05 * width, 0.08 * height, 0.45 * width, 0.1 * height)),
    ):
        ImageDraw.Draw(img).line(line, fill=colour, width=thick)
        ImageDraw.Draw(ink_img).line(line, fill=1, width=thick)
    return np.asarray(img).copy(), np.asarray(ink_img).astype(bool)


def square_image(
    mpp: float, size_um: float, square_um: float, at_um: tuple[float, float]
) -> np.ndarray:
    """White square image ``size_um`` wide with a purple square ``square_um`` wide at ``at_um``."""
    side = round(size_um / mpp)
    rgb = np.full((side, side, 3), 255, np.uint8)
    x0, y0 = round(at_um[0] / mpp), round(at_um[1] / mpp)
    n = round(square_um / mpp)
    rgb[y0 : y0 + n, x0 : x0 + n] = PURPLE
    return rgb


def write_pyramid(
    path: Path,
    rgb: np.ndarray,
    *,
    mpp: float | None = 0.25,
    levels: int = 3,
    tile: int = 256,
    unit: str = "CENTIMETER",
    compression: str = "zlib",
) -> Path:
    """Tiled pyramidal TIFF, each level half the previous; ``mpp=None`` writes no resolution."""
    per_unit_um = {"CENTIMETER": 1e4, "INCH": 25_400.0}[unit]
    with tifffile.TiffWriter(path) as tif:
        level = rgb
        for i in range(levels):
            extra = {}
            if mpp is not None:
                ppu = per_unit_um / (mpp * 2**i)
                extra = {"resolution": (ppu, ppu), "resolutionunit": unit}
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                compressionargs={"level": 1} if compression == "zlib" else {"level": 90},
                subfiletype=1 if i else 0,
                metadata=None,
                **extra,
            )
            h, w = level.shape[:2]
            level = np.asarray(Image.fromarray(level).reduce(2)) if min(h, w) >= 2 else level
    return path


def write_stripped_tiff(path: Path, rgb: np.ndarray, *, mpp: float | None = 0.5) -> Path:
    """Plain (untiled) TIFF, which OpenSlide refuses and the fallback reader loads."""
    extra = {}
    if mpp is not None:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, rgb, photometric="rgb", metadata=None, **extra)
    return path


def write_png(path: Path, rgb: np.ndarray, *, dpi: float | None = None) -> Path:
    """PNG with an optional pHYs resolution."""
    kwargs = {"dpi": (dpi, dpi)} if dpi is not None else {}
    Image.fromarray(rgb).save(path, **kwargs)
    return path


def write_truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` fraction of ``source``'s bytes, like an interrupted copy."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_random_bytes(path: Path, n: int = 4096, seed: int = 0) -> Path:
    """A file of noise that no reader should accept."""
    path.write_bytes(np.random.default_rng(seed).bytes(n))
    return path
