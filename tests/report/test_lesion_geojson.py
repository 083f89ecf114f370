"""QuPath GeoJSON of lesions: tile-edge polygons in level-0 pixels, QuPath's property layout."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from slidescan.report.lesion_geojson import (
    CLASS_NAME,
    cell_polygons,
    lesion_feature_collection,
)
from slidescan.scan.slide_call import label_lesions

ORIGIN = (40.0, 24.0)  # level-0 px of cell (0, 0)'s top-left
CELL = 96.0  # level-0 px per cell
MPP = 0.5  # µm per level-0 px


def _collection(grid: np.ndarray, **kwargs: object) -> dict:
    labels, lesions = label_lesions(
        grid, seed_threshold=0.9, extent_threshold=0.5, cell_mm=CELL * MPP / 1000, seed_cells=1
    )
    return lesion_feature_collection(
        labels, lesions, cell_origin_level0=ORIGIN, cell_level0_px=CELL,
        slide="s.svs", **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_block_outline_follows_cell_edges() -> None:
    labels = np.zeros((8, 10), dtype=np.int32)
    labels[2:5, 3:7] = 1  # 3 rows × 4 cols
    (poly,) = cell_polygons(labels, 1, ORIGIN, CELL)
    assert poly.geom_type == "Polygon" and poly.is_valid
    assert poly.area == pytest.approx(12 * CELL**2)
    assert poly.bounds == pytest.approx(
        (ORIGIN[0] + 3 * CELL, ORIGIN[1] + 2 * CELL, ORIGIN[0] + 7 * CELL, ORIGIN[1] + 5 * CELL)
    )
    # Every vertex sits on the cell lattice: the outline runs along tile edges.
    xy = np.asarray(poly.exterior.coords)
    lattice = (xy - np.asarray(ORIGIN)) / CELL
    assert np.allclose(lattice, np.round(lattice))
    assert poly.exterior.is_ccw  # RFC 7946: exterior rings counter-clockwise


def test_ring_lesion_keeps_its_hole() -> None:
    labels = np.zeros((7, 7), dtype=np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # one normal cell inside the lesion
    (poly,) = cell_polygons(labels, 1, (0, 0), CELL)
    assert poly.is_valid and len(poly.interiors) == 1
    assert poly.area == pytest.approx(24 * CELL**2)
    assert shapely.Polygon(poly.interiors[0]).bounds == (3 * CELL, 3 * CELL, 4 * CELL, 4 * CELL)
    assert not poly.interiors[0].is_ccw


def test_cells_touching_at_a_corner_make_a_multipolygon() -> None:
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[0, 0] = labels[1, 1] = 1  # one 8-connected lesion
    (geom,) = cell_polygons(labels, 1, (0, 0), 10.0)
    assert geom.geom_type == "MultiPolygon" and geom.is_valid
    assert len(geom.geoms) == 2 and geom.area == pytest.approx(200.0)


def test_each_label_gets_its_own_shape() -> None:
    labels = np.array([[1, 1, 0, 2], [0, 0, 0, 2], [3, 0, 0, 0]], dtype=np.int32)
    shapes = cell_polygons(labels, 3, (0, 0), 1.0)
    assert [s.area for s in shapes] == [2.0, 2.0, 1.0]
    assert shapes[2].bounds == (0.0, 2.0, 1.0, 3.0)


def test_feature_collection_in_qupath_layout() -> None:
    grid = np.full((12, 12), 0.1)
    grid[1:4, 1:5] = 0.95  # 12 cells: the larger lesion, feature 1
    grid[8, 8] = 0.97  # one cell
    collection = json.loads(json.dumps(_collection(grid, namespace="abc")))  # JSON round trip
    assert collection["type"] == "FeatureCollection"
    first, second = collection["features"]
    for feature in (first, second):
        assert feature["type"] == "Feature"
        uuid.UUID(feature["id"])
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == CLASS_NAME
        color = props["classification"]["color"]
        assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        assert all(isinstance(v, (int, float)) for v in props["measurements"].values())
        assert shape(feature["geometry"]).is_valid
    assert first["id"] != second["id"]
    m = first["properties"]["measurements"]
    assert m["Lesion area µm^2"] == pytest.approx(12 * (CELL * MPP) ** 2)
    assert m["Tiles"] == 12 and m["Max tumour probability"] == pytest.approx(0.95)
    # Longest diameter: centre to centre plus one cell, along the 3×4 block's diagonal.
    assert m["Longest diameter µm"] == pytest.approx((np.hypot(2, 3) + 1) * CELL * MPP, abs=0.1)
    assert "micrometastasis" in first["properties"]["name"]
    centroid = shape(first["geometry"]).centroid
    assert (centroid.x, centroid.y) == pytest.approx((ORIGIN[0] + 3 * CELL, ORIGIN[1] + 2.5 * CELL))
    assert shape(second["geometry"]).area == pytest.approx(CELL**2)


def test_ids_are_stable_for_the_same_result_and_differ_for_another() -> None:
    grid = np.full((5, 5), 0.1)
    grid[2, 2] = 0.99
    ids = [_collection(grid, namespace=ns)["features"][0]["id"] for ns in ("a", "a", "b")]
    assert ids[0] == ids[1] != ids[2]


def test_no_lesion_gives_an_empty_collection() -> None:
    collection = _collection(np.full((5, 5), 0.1))
    assert collection["type"] == "FeatureCollection" and collection["features"] == []


def test_polygons_stay_on_the_slide_and_start_where_the_viewer_image_does() -> None:
    grid = np.full((4, 4), 0.1)
    grid[3, 2:4] = 0.99  # the last row and column reach past a 350 × 330 px slide
    labels, lesions = label_lesions(
        grid, seed_threshold=0.9, extent_threshold=0.5, cell_mm=0.1, seed_cells=1
    )
    common = {"cell_origin_level0": (0, 0), "cell_level0_px": 96.0, "slide": "s"}
    clipped = lesion_feature_collection(labels, lesions, slide_size=(350, 330), **common)
    (feature,) = clipped["features"]
    assert shape(feature["geometry"]).bounds == (192.0, 288.0, 350.0, 330.0)
    # The measurement is the report's (whole cells); the polygon alone is clipped.
    assert feature["properties"]["measurements"]["Lesion area µm^2"] == pytest.approx(
        lesions[0].area_mm2 * 1e6
    )
    # MIRAX-style bounds: QuPath's pixel (0, 0) is level-0 (100, 50).
    moved = lesion_feature_collection(labels, lesions, image_offset=(100, 50), **common)
    assert shape(moved["features"][0]["geometry"]).bounds == (92.0, 238.0, 284.0, 334.0)


def test_labels_must_match_the_lesions() -> None:
    labels = np.zeros((3, 3), dtype=np.int32)
    with pytest.raises(ValueError, match="labels mark 0 lesions, expected 1"):
        lesion_feature_collection(
            labels, [object()], cell_origin_level0=(0, 0), cell_level0_px=1.0,  # type: ignore[list-item]
            slide="s",
        )  # fmt: skip
