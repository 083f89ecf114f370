"""The truth of a mosaic slide as a lab would hand it over: its label, and its tumour outlined as
QuPath GeoJSON and Camelyon16 ASAP XML (level-0 pixels), for ``slidescan validate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from shapely import box, unary_union
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from slidescan.scan.slide_call import lesion_category

CELL = 96
LABELS = {"negative": "negative", "itc": "itc", "micrometastasis": "micro",
          "macrometastasis": "macro"}  # fmt: skip


def tumour_area(truth: np.ndarray, cell_px: int = CELL) -> BaseGeometry:
    """The tumour cells of a mosaic as one geometry in level-0 pixels."""
    rows, cols = np.nonzero(truth)
    cells = [box(c * cell_px, r * cell_px, (c + 1) * cell_px, (r + 1) * cell_px)
             for r, c in zip(rows, cols, strict=True)]  # fmt: skip
    return unary_union(cells)


def truth_label(diameter_mm: float) -> str:
    """The truth.csv label of a mosaic with one lesion of ``diameter_mm`` (0: none)."""
    return "negative" if diameter_mm <= 0 else LABELS[lesion_category(diameter_mm)]


def write_geojson(path: Path, area: BaseGeometry) -> Path:
    """The tumour as a QuPath annotation export (class Tumor)."""
    features = []
    if not area.is_empty:
        features.append({
            "type": "Feature", "geometry": mapping(area),
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
        })  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}) + "\n")
    return path


def write_asap(path: Path, area: BaseGeometry) -> Path:
    """The tumour as Camelyon16 ASAP XML (group _0; holes as _2 exclusions)."""
    parts = list(getattr(area, "geoms", [area])) if not area.is_empty else []
    rings: list[tuple[str, list[tuple[float, float]]]] = []
    for part in parts:
        rings.append(("_0", list(part.exterior.coords)[:-1]))
        rings += [("_2", list(hole.coords)[:-1]) for hole in part.interiors]
    items = []
    for i, (group, coords) in enumerate(rings):
        points = "".join(f'<Coordinate Order="{j}" X="{x}" Y="{y}"/>'
                         for j, (x, y) in enumerate(coords))  # fmt: skip
        items.append(f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}">'
                     f"<Coordinates>{points}</Coordinates></Annotation>")  # fmt: skip
    path.write_text("<?xml version=\"1.0\"?><ASAP_Annotations><Annotations>"
                    + "".join(items) + "</Annotations></ASAP_Annotations>\n")  # fmt: skip
    return path
