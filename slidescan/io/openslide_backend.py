"""Every slide format OpenSlide reads (the only module that opens slides with it); regions are
composited onto white, and tiled TIFF slides are decoded directly where that is proven identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from slidescan.errors import SlidescanError, one_line
from slidescan.io.image_backend import composite_on_white
from slidescan.io.slide_mpp import openslide_mpp
from slidescan.io.tiff_reader import TiffTileReader, open_tiff_reader


class OpenSlideBackend:
    """Every format OpenSlide reads; regions are composited onto white."""

    def __init__(self, path: Path, vendor: str, *, direct_tiff: bool = True) -> None:
        self._path, self._name = path, path.name
        osr = None
        try:
            osr = self._osr = openslide.OpenSlide(path)
            self.level_dimensions = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
            properties = dict(osr.properties)
        except (openslide.OpenSlideError, OSError) as exc:
            if osr is not None:  # opened, then failed on its properties: do not leak the handle
                osr.close()
            raise SlidescanError(
                f"{self._name}: not a readable slide (truncated or unsupported): "
                f"{one_line(exc, path=self._path)}"
            ) from exc
        self.mpp = openslide_mpp(properties)
        self.bounds_origin = (
            _int_property(properties, openslide.PROPERTY_NAME_BOUNDS_X),
            _int_property(properties, openslide.PROPERTY_NAME_BOUNDS_Y),
        )
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
                    f"{one_line(exc, path=self._path)}"
                ) from exc
        return self._read_openslide(location, level, size)

    def _read_openslide(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        try:
            rgba = np.asarray(self._osr.read_region(location, level, size))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlidescanError(
                f"{self._name}: failed to read region at {location} level {level}: "
                f"{one_line(exc, path=self._path)}"
            ) from exc
        return composite_on_white(rgba)

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        self._osr.close()


def _int_property(properties: dict[str, str], name: str) -> int:
    """An integer slide property, 0 when missing or malformed."""
    try:
        return int(properties.get(name, 0))
    except (TypeError, ValueError):
        return 0
