"""Plain images as slides: stripped TIFFs (tifffile), PNG, JPEG and the rest (PIL), loaded whole
as one level; alpha is composited onto white."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from slidescan.errors import SlidescanError, one_line
from slidescan.io.slide_mpp import dpi_mpp, tiff_tag_mpp

# Plain images are loaded whole; beyond this a pyramid is the only sane way to read them.
# 10,000² RGB is 300 MB decoded; the check counts samples and bit depth as well as pixels.
MAX_FALLBACK_PIXELS = 10_000 * 10_000
MAX_FALLBACK_BYTES = MAX_FALLBACK_PIXELS * 3
_WHITE = 255


class ImageBackend:
    """A plain single-level image held in memory (fine: such images are small)."""

    def __init__(self, path: Path) -> None:
        self._name = path.name
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise SlidescanError(
                f"{self._name}: cannot read the file: {one_line(exc, path=path)}"
            ) from exc
        if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            self._pixels, self.mpp = _load_tiff(path)
            self.name = "tifffile (whole image)"
        else:
            self._pixels, self.mpp = _load_pil(path)
            self.name = "pillow (whole image)"
        h, w = self._pixels.shape[:2]
        self.level_dimensions: tuple[tuple[int, int], ...] = ((int(w), int(h)),)
        self.level_downsamples: tuple[float, ...] = (1.0,)

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[float, float]:
        return float(location[0]), float(location[1])

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        x, y = location
        w, h = size
        out = np.full((h, w, 3), _WHITE, np.uint8)
        img_h, img_w = self._pixels.shape[:2]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, img_w), min(y + h, img_h)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._pixels[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        self._pixels = np.zeros((0, 0, 3), np.uint8)


def _load_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    import tifffile

    name = path.name
    try:
        with tifffile.TiffFile(path) as tif:
            if not len(tif.pages):
                raise SlidescanError(
                    f"{name}: not a readable slide or image (truncated or corrupt?): "
                    "no image in the TIFF"
                )
            page = tif.pages.first
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
            if ends and max(ends) > path.stat().st_size:
                raise SlidescanError(f"{name}: truncated: image data runs past the end of the file")
            shape, axes = tuple(page.shape), page.axes
            _check_size(name, page.imagewidth, page.imagelength)
            decoded = int(np.prod(shape, dtype=np.int64)) * np.dtype(page.dtype).itemsize
            if decoded > MAX_FALLBACK_BYTES:
                raise SlidescanError(_too_large_message(name, page.imagewidth, page.imagelength))
            mpp = tiff_tag_mpp(page.tags.get("XResolution"), page.tags.get("ResolutionUnit"))
            pixels = page.asarray()
    except SlidescanError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt input
        raise _unreadable(path, exc) from exc
    if axes.startswith("S") and len(shape) == 3:  # planar (separate) samples
        pixels = np.moveaxis(pixels, 0, -1)
    return _to_rgb8(name, pixels), mpp


def _load_pil(path: Path) -> tuple[np.ndarray, float | None]:
    name = path.name
    try:
        with warnings.catch_warnings():
            # Our own size limit below applies; PIL's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                _check_size(name, *opened.size)
                bands = len(opened.getbands())
                if opened.width * opened.height * max(bands, 3) > MAX_FALLBACK_BYTES:
                    raise SlidescanError(_too_large_message(name, *opened.size))
                mpp = dpi_mpp(opened.info.get("dpi"))
                im = ImageOps.exif_transpose(opened)
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    pixels = composite_on_white(np.asarray(im.convert("RGBA")))
                else:
                    pixels = np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise SlidescanError(_too_large_message(name)) from exc
    except SlidescanError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt input
        raise _unreadable(path, exc) from exc
    return pixels, mpp


def _unreadable(path: Path, exc: Exception) -> SlidescanError:
    return SlidescanError(
        f"{path.name}: not a readable slide or image (truncated or corrupt?): "
        f"{one_line(exc, path=path)}"
    )


def _check_size(name: str, width: int, height: int) -> None:
    if width * height > MAX_FALLBACK_PIXELS:
        raise SlidescanError(_too_large_message(name, width, height))


def _too_large_message(name: str, width: int | None = None, height: int | None = None) -> str:
    dims = f" ({width}×{height})" if width is not None else ""
    return (
        f"{name}: plain image too large to load{dims}; convert it to a tiled pyramidal TIFF "
        "(e.g. vips tiffsave in.png out.tif --tile --pyramid --compression jpeg)"
    )


def _to_rgb8(name: str, pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint16:
        pixels = (pixels // 257).astype(np.uint8)
    elif pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype != np.uint8:
        raise SlidescanError(f"{name}: unsupported pixel type {pixels.dtype}; expected 8-bit RGB")
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return composite_on_white(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels)
    raise SlidescanError(f"{name}: unsupported image shape {pixels.shape}; expected RGB")


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Non-premultiplied RGBA -> RGB over white (transparent = outside the scanned area)."""
    alpha = rgba[:, :, 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[:, :, :3])
    a = alpha.astype(np.uint16)
    rgb = (rgba[:, :, :3].astype(np.uint16) * a + _WHITE * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)
