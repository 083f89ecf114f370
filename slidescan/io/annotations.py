"""Tumour annotations of a slide: QuPath GeoJSON exports and Camelyon16 ASAP XML.

Both give polygons in level-0 pixels. QuPath's coordinates start at the slide's non-empty region
(its bounds origin); ASAP's at the level-0 origin. ``read_annotations`` returns the tumour area as
one shapely geometry and which of the two conventions it uses.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shapely import geometry, make_valid, unary_union
from shapely.geometry.base import BaseGeometry

from slidescan.errors import SlidescanError

DEFAULT_TUMOUR_CLASSES = ("tumor", "tumour", "metastasis")
# Camelyon16 ASAP groups: _0 and _1 are tumour, _2 are normal regions cut out of them.
ASAP_TUMOUR_GROUPS = ("_0", "_1", "tumor", "tumour", "metastases")
ASAP_EXCLUDE_GROUPS = ("_2", "exclusion")
SUFFIXES = (".geojson", ".json", ".xml")


@dataclass(frozen=True)
class Annotations:
    """A slide's tumour area in level-0 pixels; ``bounds_relative``: QuPath's convention."""

    tumour: BaseGeometry
    bounds_relative: bool
    source: Path


def find_annotation(folder: Path, slide: str) -> Path | None:
    """The annotation file of ``slide`` in ``folder``: ``<stem>.geojson``, ``.json`` or ``.xml``."""
    stem = Path(slide).stem
    for suffix in SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def read_annotations(
    path: Path, tumour_classes: tuple[str, ...] = DEFAULT_TUMOUR_CLASSES
) -> Annotations:
    """Read one annotation file (GeoJSON or ASAP XML) into its tumour area."""
    try:
        if path.suffix.lower() == ".xml":
            return Annotations(_read_asap(path), False, path)
        return Annotations(_read_geojson(path, tumour_classes), True, path)
    except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as exc:
        raise SlidescanError(
            f"{path}: unreadable annotations ({type(exc).__name__}: {exc})"
        ) from None


def _read_geojson(path: Path, tumour_classes: tuple[str, ...]) -> BaseGeometry:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data["features"]
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):  # QuPath's "export as array"
        features = data
    else:
        raise ValueError("neither a GeoJSON FeatureCollection, a Feature nor a list of them")
    wanted = {name.lower() for name in tumour_classes}
    shapes = []
    for feature in features:
        if _class_name(feature.get("properties") or {}).lower() not in wanted:
            continue
        shape = geometry.shape(feature["geometry"])
        if shape.geom_type in ("Polygon", "MultiPolygon", "GeometryCollection"):
            shapes.append(make_valid(shape))
    return unary_union(shapes) if shapes else geometry.Polygon()


def _class_name(properties: dict[str, Any]) -> str:
    classification = properties.get("classification")
    if isinstance(classification, dict):
        return str(classification.get("name", ""))
    if isinstance(classification, str):
        return classification
    return str(properties.get("name", ""))


def _read_asap(path: Path) -> BaseGeometry:
    root = ET.parse(path).getroot()
    tumour, excluded = [], []
    for annotation in root.iter("Annotation"):
        group = (annotation.get("PartOfGroup") or "").lower()
        points = sorted(
            annotation.iter("Coordinate"), key=lambda c: int(float(c.get("Order", "0")))
        )
        coords = [(float(c.get("X", "nan")), float(c.get("Y", "nan"))) for c in points]
        if len(coords) < 3:
            continue
        polygon = make_valid(geometry.Polygon(coords))
        if group in ASAP_EXCLUDE_GROUPS:
            excluded.append(polygon)
        elif group in ASAP_TUMOUR_GROUPS:
            tumour.append(polygon)
    area = unary_union(tumour) if tumour else geometry.Polygon()
    return area.difference(unary_union(excluded)) if excluded else area
