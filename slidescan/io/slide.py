"""Read whole-slide images at a requested resolution; the only module that touches OpenSlide.

Coordinates: ``location`` tuples are ``(x, y)`` in level-0 pixels and ``size`` tuples are
``(width, height)``, as in OpenSlide; returned arrays are ``(height, width, 3)`` uint8 RGB.
Output pixel ``(i, j)`` of a resampled read covers the source interval ``[x0 + j*f, x0 + (j+1)*f)``
(pixel *edges*, not centres), so a region read at any resolution lines up with level 0.

Two backends sit behind :class:`Slide`: OpenSlide for every format it reads, and a whole-image
fallback (tifffile for TIFF, PIL for everything else) for plain images such as stripped TIFFs,
PNGs and JPEGs. For tiled TIFF slides (Aperio SVS, generic TIFF) the OpenSlide backend hands pixel
decoding to :mod:`slidescan.io.tiff_reader`, which is several times faster for the same pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import openslide
from PIL import Image, ImageOps

from slidescan.errors import SlidescanError, one_line
from slidescan.io.tiff_reader import TiffTileReader, open_tiff_reader

# Plain images are loaded whole; beyond this a pyramid is the only sane way to read them.
MAX_FALLBACK_PIXELS = 20_000 * 20_000
# A level may be up to 1% finer than asked without counting as "too coarse" (rounding in
# vendor downsamples such as 4.0003 must not push us to a 4x larger level).
LEVEL_MPP_TOLERANCE = 1.01
# Outside this range an image resolution tag is a scanner/editor default, not microscopy.
PLAUSIBLE_MPP = (0.02, 20.0)
# Thumbnails are assembled from reads of at most this many level pixels a side.
_THUMBNAIL_READ_PX = 4096
_WHITE = 255
# --reader choices: "auto" decodes tiled TIFF slides directly where that is proven identical.
READERS = ("auto", "openslide")
_CM_UM = 1e4
_INCH_UM = 25_400.0


class _Backend(Protocol):
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None  # from the file's metadata, if any

    @property
    def name(self) -> str: ...

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[float, float]: ...

    def close(self) -> None: ...


class Slide:
    """A thin reader over one slide: geometry, MPP and region reads; no masking or saving."""

    def __init__(self, path: Path, backend: _Backend, mpp: float) -> None:
        self.path = path
        self._backend = backend
        self.level_dimensions: tuple[tuple[int, int], ...] = backend.level_dimensions
        self.level_downsamples: tuple[float, ...] = backend.level_downsamples
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        self.mpp = mpp

    @property
    def reader(self) -> str:
        """Which decoder reads the pixels (recorded in reports for provenance)."""
        return self._backend.name

    @property
    def in_memory(self) -> bool:
        """True for plain images, which the fallback reader holds whole (no pyramid to read)."""
        return isinstance(self._backend, _ImageBackend)

    def __repr__(self) -> str:
        return f"Slide({self.path.name!r}, dimensions={self.dimensions}, mpp={self.mpp:g})"

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size`` pixels of ``level`` starting at level-0 ``location``; outside is white."""
        if not 0 <= level < len(self.level_dimensions):
            raise ValueError(f"level {level} out of range 0..{len(self.level_dimensions) - 1}")
        w, h = int(size[0]), int(size[1])
        if w < 0 or h < 0:
            raise ValueError(f"negative region size {size}")
        if w == 0 or h == 0:
            return np.full((h, w, 3), _WHITE, np.uint8)
        return self._backend.read_region((int(location[0]), int(location[1])), level, (w, h))

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """Lowest-resolution level still at least as fine as ``target_mpp`` (1% slack); else 0."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if (
                self.mpp * ds <= target_mpp * LEVEL_MPP_TOLERANCE
                and ds > self.level_downsamples[best]
            ):
                best = level
        return best

    def read_at_mpp(
        self, location: tuple[int, int], size: tuple[int, int], target_mpp: float
    ) -> np.ndarray:
        """Region with top-left at level-0 ``location`` and ``size`` pixels at ``target_mpp``."""
        if target_mpp <= 0:
            raise ValueError(f"target_mpp must be positive, got {target_mpp}")
        level = self.best_level_for_mpp(target_mpp)
        ds = self.level_downsamples[level]
        factor = target_mpp / (self.mpp * ds)  # level pixels per output pixel
        return self._read_scaled(level, location[0] / ds, location[1] / ds, factor, size)

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """RGB thumbnail with longest side <= ``max_size``, and level-0 px per thumbnail px.

        Read in bounded chunks from the coarsest suitable level, so memory stays small even
        for a single-level gigapixel slide.
        """
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        width, height = self.dimensions
        downsample = max(1.0, max(width, height) / max_size)
        out_w = max(1, min(max_size, math.ceil(width / downsample - 1e-6)))
        out_h = max(1, min(max_size, math.ceil(height / downsample - 1e-6)))
        level = max(
            (i for i, ds in enumerate(self.level_downsamples) if ds <= downsample * 1.0001),
            key=lambda i: self.level_downsamples[i],
            default=0,
        )
        ds = self.level_downsamples[level]
        factor = downsample / ds
        chunk = max(1, int(_THUMBNAIL_READ_PX / factor))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for ty in range(0, out_h, chunk):
            for tx in range(0, out_w, chunk):
                cw, ch = min(chunk, out_w - tx), min(chunk, out_h - ty)
                out[ty : ty + ch, tx : tx + cw] = self._read_scaled(
                    level, tx * factor, ty * factor, factor, (cw, ch)
                )
        return out, downsample

    def close(self) -> None:
        """Release the underlying file handle."""
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read_scaled(
        self, level: int, x0: float, y0: float, factor: float, size: tuple[int, int]
    ) -> np.ndarray:
        """Output px (i, j) = level px area [x0 + j*factor, ...) resampled; x0, y0 in level px.

        A margin is read around the box so PIL's filter sees real neighbours on every side:
        then a pixel's value does not depend on the read window, and a block read sliced into
        tiles matches reading each tile alone.
        """
        w, h = int(size[0]), int(size[1])
        ds = self.level_downsamples[level]
        if abs(factor - 1.0) < 1e-9 and abs(x0 - round(x0)) < 1e-6 and abs(y0 - round(y0)) < 1e-6:
            # Already at the target scale on whole pixels: read exactly the box, no margin, so
            # a block touches no more of the slide's compressed tiles than it needs.
            return self.read_region((round(x0 * ds), round(y0 * ds)), level, (w, h))
        margin = math.ceil(max(factor, 1.0)) + 1
        loc_x = round((math.floor(x0) - margin) * ds)
        loc_y = round((math.floor(y0) - margin) * ds)
        # Where the backend's read really starts in level pixels: OpenSlide uses location / ds
        # (fractional at vendor downsamples like 4.0003), the direct TIFF reader whole pixels.
        start_x, start_y = self._backend.level_origin((loc_x, loc_y), level)
        off_x, off_y = x0 - start_x, y0 - start_y
        src_w, src_h = w * factor, h * factor
        read_w = math.ceil(off_x + src_w) + margin
        read_h = math.ceil(off_y + src_h) + margin
        region = self.read_region((loc_x, loc_y), level, (read_w, read_h))
        box = (off_x, off_y, off_x + src_w, off_y + src_h)
        resized = Image.fromarray(region).resize((w, h), Image.Resampling.BILINEAR, box=box)
        return np.asarray(resized)


def check_reader(reader: str) -> None:
    """SlidescanError unless ``reader`` is one of :data:`READERS`."""
    if reader not in READERS:
        raise SlidescanError(f"--reader must be one of {', '.join(READERS)}, got {reader!r}")


def open_slide(path: str | Path, *, mpp: float | None = None, reader: str = "auto") -> Slide:
    """OpenSlide for every format it reads; plain TIFF/PNG/JPEG images via a fallback backend
    (PIL or tifffile) behind the same class; ``mpp`` overrides metadata.

    ``reader="auto"`` lets tiled TIFF slides be decoded directly (:mod:`slidescan.io.tiff_reader`);
    ``"openslide"`` keeps every pixel on OpenSlide's decoder.
    """
    check_reader(reader)
    path = Path(path)
    name = path.name
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise SlidescanError(f"{name}: --mpp must be a positive number, got {mpp}")
    if not path.exists():
        raise SlidescanError(f"{name}: file not found ({path})")
    if not path.is_file():
        raise SlidescanError(f"{name}: not a file ({path})")

    try:
        vendor = openslide.OpenSlide.detect_format(path)
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlidescanError(f"{name}: cannot read the file: {one_line(exc)}") from exc
    backend: _Backend
    if vendor is not None:
        backend = _OpenSlideBackend(path, vendor, direct_tiff=reader == "auto")
        found = backend.mpp
    else:
        backend = _ImageBackend(path)
        found = backend.mpp
    if mpp is None:
        mpp = found
    if mpp is None:
        backend.close()
        raise SlidescanError(
            f"{name}: the slide has no microns-per-pixel metadata; pass --mpp "
            "(e.g. --mpp 0.25 for 40×, 0.5 for 20×)"
        )
    return Slide(path, backend, mpp)


class _OpenSlideBackend:
    """Every format OpenSlide reads; regions are composited onto white."""

    def __init__(self, path: Path, vendor: str, *, direct_tiff: bool = True) -> None:
        self._name = path.name
        try:
            self._osr = openslide.OpenSlide(path)
            self.level_dimensions = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
            properties = dict(self._osr.properties)
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlidescanError(
                f"{self._name}: not a readable slide (truncated or unsupported): {one_line(exc)}"
            ) from exc
        self.mpp = _openslide_mpp(properties)
        self._tiff: TiffTileReader | None = None
        if direct_tiff:
            self._tiff = open_tiff_reader(
                path, vendor, self.level_dimensions, self.level_downsamples, self._read_openslide
            )

    @property
    def name(self) -> str:
        if self._tiff is None:
            return "openslide"
        levels = ",".join(str(level) for level in sorted(self._tiff.levels))
        return f"tifffile+imagecodecs (levels {levels}); openslide"

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[float, float]:
        ds = self.level_downsamples[level]
        if self._tiff is not None and level in self._tiff.levels:
            return float(round(location[0] / ds)), float(round(location[1] / ds))
        return location[0] / ds, location[1] / ds

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        if self._tiff is not None and level in self._tiff.levels:
            x, y = self.level_origin(location, level)
            try:
                return self._tiff.read(level, int(x), int(y), size[0], size[1])
            except Exception as exc:  # tifffile/imagecodecs raise many types on corrupt tiles
                raise SlidescanError(
                    f"{self._name}: failed to decode region at {location} level {level}: "
                    f"{one_line(exc)}"
                ) from exc
        return self._read_openslide(location, level, size)

    def _read_openslide(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        try:
            rgba = np.asarray(self._osr.read_region(location, level, size))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlidescanError(
                f"{self._name}: failed to read region at {location} level {level}: {one_line(exc)}"
            ) from exc
        return _composite_on_white(rgba)

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        self._osr.close()


class _ImageBackend:
    """A plain single-level image held in memory (fine: such images are small)."""

    def __init__(self, path: Path) -> None:
        self._name = path.name
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise SlidescanError(f"{self._name}: cannot read the file: {one_line(exc)}") from exc
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
            page = tif.pages.first
            shape, axes = tuple(page.shape), page.axes
            _check_size(name, page.imagewidth, page.imagelength)
            mpp = _tiff_tag_mpp(page.tags.get("XResolution"), page.tags.get("ResolutionUnit"))
            pixels = page.asarray()
    except SlidescanError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt input
        raise _unreadable(name, exc) from exc
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
                mpp = _dpi_mpp(opened.info.get("dpi"))
                im = ImageOps.exif_transpose(opened)
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    pixels = _composite_on_white(np.asarray(im.convert("RGBA")))
                else:
                    pixels = np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise SlidescanError(_too_large_message(name)) from exc
    except SlidescanError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt input
        raise _unreadable(name, exc) from exc
    return pixels, mpp


def _unreadable(name: str, exc: Exception) -> SlidescanError:
    return SlidescanError(
        f"{name}: not a readable slide or image (truncated or corrupt?): {one_line(exc)}"
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
        return _composite_on_white(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels)
    raise SlidescanError(f"{name}: unsupported image shape {pixels.shape}; expected RGB")


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Non-premultiplied RGBA -> RGB over white (transparent = outside the scanned area)."""
    alpha = rgba[:, :, 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[:, :, :3])
    a = alpha.astype(np.uint16)
    rgb = (rgba[:, :, :3].astype(np.uint16) * a + _WHITE * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def _openslide_mpp(properties: Mapping[str, str]) -> float | None:
    value = _positive_float(properties.get(openslide.PROPERTY_NAME_MPP_X))
    if value is not None:
        return value
    # Generic TIFFs with inch units get no openslide.mpp-x; read the raw tags ourselves.
    return _resolution_mpp(
        _positive_float(properties.get("tiff.XResolution")),
        (properties.get("tiff.ResolutionUnit") or "").strip().lower(),
    )


def _tiff_tag_mpp(xres_tag: Any, unit_tag: Any) -> float | None:
    if xres_tag is None:
        return None
    value = xres_tag.value
    try:
        xres = value[0] / value[1] if isinstance(value, tuple) else float(value)
    except (ZeroDivisionError, TypeError, ValueError):
        return None
    unit = {1: "none", 2: "inch", 3: "centimeter"}.get(int(unit_tag.value) if unit_tag else 2)
    return _resolution_mpp(xres, unit or "none")


def _resolution_mpp(pixels_per_unit: float | None, unit: str) -> float | None:
    if pixels_per_unit is None or pixels_per_unit <= 0:
        return None
    if unit == "centimeter":
        mpp = _CM_UM / pixels_per_unit
    elif unit == "inch":
        if _is_default_dpi(pixels_per_unit):
            return None
        mpp = _INCH_UM / pixels_per_unit
    else:
        return None
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def _dpi_mpp(dpi: Any) -> float | None:
    if not dpi:
        return None
    try:
        x = float(dpi[0] if isinstance(dpi, tuple | list) else dpi)
    except (TypeError, ValueError):
        return None
    return _resolution_mpp(x, "inch")


def _is_default_dpi(dpi: float) -> bool:
    # PNG stores pixels per metre, so 72 dpi reads back as 72.009.
    return any(abs(dpi - d) < 0.5 for d in (72.0, 96.0))


def _positive_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None
