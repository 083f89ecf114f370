"""Read whole-slide images at a requested resolution: the reader facade every scan uses.

Coordinates: ``location`` tuples are ``(x, y)`` in level-0 pixels and ``size`` tuples are
``(width, height)``, as in OpenSlide; returned arrays are ``(height, width, 3)`` uint8 RGB.
Output pixel ``(i, j)`` of a resampled read covers the source interval ``[x0 + j*f, x0 + (j+1)*f)``
(pixel *edges*, not centres), so a region read at any resolution lines up with level 0.

Two backends sit behind :class:`Slide`: ``openslide_backend.py`` for every format OpenSlide reads
(handing tiled TIFF slides' pixel decoding to ``tiff_reader.py``, several times faster for the same
pixels), and ``image_backend.py`` for plain images such as stripped TIFFs, PNGs and JPEGs.
``slide_mpp.py`` finds the scale in each one's metadata.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
import openslide
from PIL import Image

from slidescan.errors import SlidescanError, one_line
from slidescan.io.image_backend import ImageBackend
from slidescan.io.openslide_backend import OpenSlideBackend
from slidescan.vocabulary import Reader

# A level may be up to 1% finer than asked without counting as "too coarse" (rounding in
# vendor downsamples such as 4.0003 must not push us to a 4x larger level).
LEVEL_MPP_TOLERANCE = 1.01
# Thumbnails are assembled from reads of at most this many level pixels a side.
_THUMBNAIL_READ_PX = 4096
_WHITE = 255
# Whole-slide formats only OpenSlide reads: never handed to the plain-image fallback.
VENDOR_SUFFIXES = frozenset({".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide"})
# --reader choices: "auto" decodes tiled TIFF slides directly where that is proven identical.
READERS = tuple(Reader)
DEFAULT_MPP_SOURCE = "--default-mpp"  # a slide's mpp_source when default_mpp gave its scale


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

    def __init__(
        self, path: Path, backend: _Backend, mpp: float, *, mpp_source: str = "slide metadata"
    ) -> None:
        self.path = path
        self.mpp_source = mpp_source  # where mpp came from: slide metadata, --mpp, --default-mpp
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
    def bounds_origin(self) -> tuple[int, int]:
        """Level-0 top-left of the slide's non-empty region when its metadata gives one
        (OpenSlide's bounds, e.g. MIRAX), else (0, 0): where viewers that crop to it, such as
        QuPath, put their pixel (0, 0)."""
        return getattr(self._backend, "bounds_origin", (0, 0))

    @property
    def in_memory(self) -> bool:
        """True for plain images, which the fallback reader holds whole (no pyramid to read)."""
        return isinstance(self._backend, ImageBackend)

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
        raise SlidescanError(
            f"reader must be one of {', '.join(READERS)}, got {reader!r}", param="reader"
        )


def dicom_file(folder: Path) -> Path | None:
    """A DICOM WSI folder's first ``.dcm`` file (OpenSlide finds the rest of the series from
    it); None when ``folder`` holds none."""
    try:
        return min((p for p in folder.iterdir() if p.suffix.lower() == ".dcm" and p.is_file()),
                   default=None)  # fmt: skip
    except OSError:
        return None


def slide_bytes(path: Path) -> int:
    """A slide's size on disk: its file, or all the files of a DICOM folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def open_slide(
    path: str | Path,
    *,
    mpp: float | None = None,
    default_mpp: float | None = None,
    reader: str = "auto",
) -> Slide:
    """OpenSlide for every format it reads; plain TIFF/PNG/JPEG images via a fallback backend
    (PIL or tifffile) behind the same class. ``mpp`` overrides the metadata; ``default_mpp`` is
    used only where the metadata has none.

    ``reader="auto"`` lets tiled TIFF slides be decoded directly (:mod:`slidescan.io.tiff_reader`);
    ``"openslide"`` keeps every pixel on OpenSlide's decoder. ``path`` may be a DICOM WSI folder:
    one slide, named after the folder.
    """
    check_reader(reader)
    path = Path(path)
    name = path.name
    for option, value in (("mpp", mpp), ("default_mpp", default_mpp)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SlidescanError(
                f"{name}: {option} must be a positive number, got {value}", param=option
            )
    if not path.exists():
        raise SlidescanError(f"{name}: file not found ({path})")
    # A DICOM whole-slide image is a folder of .dcm files; OpenSlide opens the series from any.
    target = dicom_file(path) if path.is_dir() else path
    if target is None:
        raise SlidescanError(f"{name}: not a file ({path})")
    if target.stat().st_size == 0:
        raise SlidescanError(f"{name}: empty file (0 bytes)")

    try:
        vendor = openslide.OpenSlide.detect_format(target)
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlidescanError(f"{name}: cannot read the file: {one_line(exc, path=path)}") from exc
    backend: _Backend
    if vendor is None and path.suffix.lower() in VENDOR_SUFFIXES:
        # Only OpenSlide reads these; a plain-image reader would find just a fragment of them.
        raise SlidescanError(
            f"{name}: not a readable slide: OpenSlide does not recognise this "
            f"{path.suffix} file (truncated or corrupt?)"
        )
    if vendor is not None:
        backend = OpenSlideBackend(target, vendor, direct_tiff=reader == "auto")
        found = backend.mpp
    else:
        backend = ImageBackend(path)
        found = backend.mpp
    source = "--mpp"
    if mpp is None:
        mpp, source = found, "slide metadata"
    if mpp is None:
        mpp, source = default_mpp, DEFAULT_MPP_SOURCE
    if mpp is None:
        backend.close()
        raise SlidescanError(
            f"{name}: the slide has no microns-per-pixel metadata; give default_mpp (only "
            "slides without it) or mpp (all slides), e.g. 0.25 for 40×, 0.5 for 20×",
            param="default_mpp",
        )
    return Slide(path, backend, mpp, mpp_source=source)
