"""Lesions as QuPath annotations: a GeoJSON FeatureCollection of tile-edge polygons.

Coordinates are level-0 slide pixels with the origin at the image's top-left corner, as QuPath
expects (*File → Import objects from file*). Each lesion becomes one feature: a Polygon, or a
MultiPolygon where its cells touch only at corners, outlined along the edges of the grid cells it
covers (the area each cell stands for), with holes kept. Properties follow QuPath's own export:
``objectType: annotation``, a ``classification`` with name and RGB colour, a ``name``, and a
``measurements`` map (area in µm², longest diameter, probabilities, category index). Polygons
stay within the slide and, for formats QuPath crops to OpenSlide's bounds, start where QuPath's
image does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from slidescan.about import RESEARCH_USE_NOTICE
from slidescan.report.slide_report import Lesion
from slidescan.vocabulary import CATEGORY_NAMES, CATEGORY_RANK

CLASS_NAME = "Tumor"  # one of QuPath's built-in classes, so imported lesions get its colour
CLASS_COLOR = (200, 0, 0)


def cell_polygons(
    labels: np.ndarray, count: int, origin: Sequence[float], cell_px: float
) -> list[BaseGeometry]:
    """Outline of each label ``1..count`` of a (rows, cols) grid, in level-0 pixels.

    Cell (r, c) covers x in [ox + c·s, ox + (c+1)·s) and y in [oy + r·s, oy + (r+1)·s), with
    ``(ox, oy) = origin`` and ``s = cell_px``. Each row's runs of cells become one rectangle
    before the union, so a lesion of thousands of cells costs hundreds of boxes, not thousands.
    """
    grid = np.asarray(labels)
    if grid.ndim != 2:
        raise ValueError(f"labels must be a 2-D grid, got shape {grid.shape}")
    if not cell_px > 0:
        raise ValueError(f"cell_px must be positive, got {cell_px}")
    ox, oy = float(origin[0]), float(origin[1])
    boxes: list[list[BaseGeometry]] = [[] for _ in range(count)]
    for row in range(grid.shape[0]):
        line = grid[row]
        # Starts and ends of runs of equal labels along this row.
        edges = np.flatnonzero(np.diff(line)) + 1
        starts = np.r_[0, edges]
        ends = np.r_[edges, len(line)]
        for start, end in zip(starts, ends, strict=True):
            lab = int(line[start])
            if 1 <= lab <= count:
                boxes[lab - 1].append(
                    shapely.box(
                        ox + start * cell_px,
                        oy + row * cell_px,
                        ox + end * cell_px,
                        oy + (row + 1) * cell_px,
                    )  # fmt: skip
                )
    return [_oriented(shapely.union_all(parts)) for parts in boxes]


def _oriented(geometry: BaseGeometry) -> BaseGeometry:
    """One ring orientation whatever the union gave: exteriors counter-clockwise in the raw
    numbers (RFC 7946's rule; on screen, with y down, they turn clockwise). QuPath ignores it;
    a fixed order keeps files comparable."""
    if geometry.geom_type == "Polygon":
        return orient(geometry, 1.0)
    if geometry.geom_type == "MultiPolygon":
        return shapely.MultiPolygon([orient(part, 1.0) for part in geometry.geoms])
    return geometry


def lesion_feature_collection(
    labels: np.ndarray,
    lesions: Sequence[Lesion],
    *,
    cell_origin_level0: Sequence[float],
    cell_level0_px: float,
    slide: str,
    slide_size: Sequence[int] | None = None,
    image_offset: Sequence[float] = (0.0, 0.0),
    namespace: str = "",
) -> dict[str, Any]:
    """The QuPath GeoJSON of ``lesions`` (``labels`` from :func:`label_lesions`).

    Polygons are clipped to
    ``slide_size`` (width, height; the grid's last cells may reach past the edge) and moved by
    ``-image_offset``: the level-0 point where the viewer's image starts (OpenSlide's bounds for
    slides QuPath crops to them, such as MIRAX). Feature ids are UUIDs derived from
    ``namespace`` (e.g. the result's fingerprint), the slide and the lesion's rank, so a rerun
    with the same settings writes the same file.
    """
    if len(lesions) != int(np.max(labels, initial=0)):
        raise ValueError(
            f"labels mark {np.max(labels, initial=0)} lesions, expected {len(lesions)}"
        )
    shapes = cell_polygons(labels, len(lesions), cell_origin_level0, cell_level0_px)
    if slide_size is not None:
        shapes = [shapely.clip_by_rect(g, 0, 0, *slide_size) for g in shapes]
    dx, dy = (-float(v) for v in image_offset)
    if dx or dy:
        shapes = [shapely.transform(g, lambda xy: xy + (dx, dy)) for g in shapes]
    features = []
    for rank, (lesion, shape) in enumerate(zip(lesions, shapes, strict=True), start=1):
        category = CATEGORY_NAMES[lesion.category]
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"slidescan:{namespace}:{slide}:{rank}")),
                "geometry": mapping(shape),
                "properties": {
                    "objectType": "annotation",
                    "name": f"Lesion {rank}: {category}, {lesion.diameter_mm:.2f} mm",
                    "classification": {"name": CLASS_NAME, "color": list(CLASS_COLOR)},
                    "isLocked": False,
                    "measurements": {
                        # The report's area (whole cells), so JSON and QuPath agree; not named
                        # "Area µm^2", which QuPath computes itself from the (clipped) polygon.
                        "Lesion area µm^2": round(lesion.area_mm2 * 1e6, 1),
                        "Longest diameter µm": round(lesion.diameter_mm * 1000.0, 1),
                        "Mean tumour probability": round(lesion.mean_probability, 6),
                        "Max tumour probability": round(lesion.max_probability, 6),
                        "Tiles": lesion.tiles,
                        "Category (1 ITC, 2 micro, 3 macro)": CATEGORY_RANK[lesion.category],
                    },
                },
            }
        )
    return {
        "type": "FeatureCollection",
        "features": features,
        # Foreign members are allowed by RFC 7946 and ignored by QuPath.
        "slidescan": {"slide": slide, "notice": RESEARCH_USE_NOTICE},
    }
