"""Microns per pixel from a slide's metadata: OpenSlide properties, TIFF resolution tags, image DPI.

Values outside :data:`PLAUSIBLE_MPP`, and the 72/96 DPI that editors write by default, are not
microscopy and count as missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import openslide

# Outside this range an image resolution tag is a scanner/editor default, not microscopy.
PLAUSIBLE_MPP = (0.02, 20.0)
_CM_UM = 1e4
_INCH_UM = 25_400.0


def openslide_mpp(properties: Mapping[str, str]) -> float | None:
    value = _positive_float(properties.get(openslide.PROPERTY_NAME_MPP_X))
    if value is not None:
        return value
    # Generic TIFFs with inch units get no openslide.mpp-x; read the raw tags ourselves.
    return _resolution_mpp(
        _positive_float(properties.get("tiff.XResolution")),
        (properties.get("tiff.ResolutionUnit") or "").strip().lower(),
    )


def tiff_tag_mpp(xres_tag: Any, unit_tag: Any) -> float | None:
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


def dpi_mpp(dpi: Any) -> float | None:
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
