"""The heatmap as OME-Zarr (NGFF 0.5): read by the reference reader ``ome-zarr`` and validated by
``ome-zarr-models``; placed on the slide in micrometres with the pixel-centre convention."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Node, Reader
from ome_zarr_models.v05.image import Image
from scan_helpers import CELL_UM, SLIDE_MPP
from slide_fixtures import square_image, write_pyramid

from slidescan.errors import SlidescanError
from slidescan.io.heatmap import HeatmapWriter, read_heatmap
from slidescan.io.heatmap_format import HeatmapGeometry
from slidescan.scan.scanner import scan_slide

SHAPE = (6, 9)
MPP = 0.25
ORIGIN = (100.0, 40.0)  # level-0 (x, y), pixel edges
CELL_PX = 192.0


def _write(path: Path, **geometry: Any) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    tissue = rng.random(SHAPE) < 0.5
    cells = np.argwhere(tissue)
    probs = rng.random(len(cells)).astype(np.float32)
    with HeatmapWriter(path, SHAPE, chunks=(4, 4), attrs={"slide": "s"}, **geometry) as writer:
        writer.write_tissue(tissue)
        writer.write_cells(cells, probs)
    return writer.probability, tissue


def _nodes(path: Path) -> list[Node]:
    location = parse_url(str(path))
    assert location is not None, f"ome-zarr does not recognise {path}"
    return list(Reader(location)())


def _only(nodes: list[Node], spec: type) -> Node:
    found = [n for n in nodes if any(isinstance(s, spec) for s in n.specs)]
    assert len(found) == 1, [str(n) for n in nodes]
    return found[0]


def _transforms(node: Node) -> dict[str, list[float]]:
    (level,) = node.metadata["coordinateTransformations"]  # one resolution level
    return {t["type"]: t[t["type"]] for t in level}


def test_ome_zarr_reader_sees_axes_scale_translation_and_data(tmp_path: Path) -> None:
    path = tmp_path / "hm.zarr"
    probability, tissue = _write(
        path, slide_mpp=MPP, cell_origin_level0=ORIGIN, cell_level0_px=CELL_PX
    )
    nodes = _nodes(path)
    image = _only([n for n in nodes if not any(isinstance(s, Label) for s in n.specs)], Multiscales)
    assert image.metadata["axes"] == [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    # 192 px × 0.25 µm = 48 µm per cell; cell (0, 0)'s centre is 95.5 px past its top-left edge.
    assert _transforms(image) == {
        "scale": [48.0, 48.0],
        "translation": [(40 + 95.5) * 0.25, (100 + 95.5) * 0.25],
    }
    (data,) = image.data
    np.testing.assert_array_equal(np.asarray(data), probability)  # NaN where not scored

    label = _only(nodes, Label)
    assert label.metadata["name"] == "tissue"
    assert _transforms(label) == _transforms(image)  # the label layer sits on the heatmap
    np.testing.assert_array_equal(np.asarray(label.data[0]), tissue.astype(np.uint8))


@pytest.mark.parametrize("cell_px", [192.0, 7.0, 373.248])  # even, odd, fractional
def test_cells_cover_exactly_their_level0_pixels(tmp_path: Path, cell_px: float) -> None:
    """Cell (r, c) spans level-0 pixels x0 + c·n .. x0 + (c+1)·n - 1 (edge coordinates), i.e. in
    the viewer's pixel-centre µm from (x0 + c·n - ½)·mpp to (x0 + (c+1)·n - ½)·mpp."""
    path = tmp_path / "hm.zarr"
    _write(path, slide_mpp=MPP, cell_origin_level0=ORIGIN, cell_level0_px=cell_px)
    image = _only([n for n in _nodes(path) if n.metadata.get("name") == "probability"], Multiscales)
    t = _transforms(image)
    for axis, origin in ((0, ORIGIN[1]), (1, ORIGIN[0])):
        for i in (0, 1, 5):
            centre = t["translation"][axis] + i * t["scale"][axis]
            low, high = centre - t["scale"][axis] / 2, centre + t["scale"][axis] / 2
            assert low == pytest.approx((origin + i * cell_px - 0.5) * MPP)
            assert high == pytest.approx((origin + (i + 1) * cell_px - 0.5) * MPP)
    if cell_px == 7.0:  # whole pixels: the centre is the middle pixel (pixel 103 for 100..106)
        assert t["translation"][1] == pytest.approx(103 * MPP)


def test_without_geometry_unit_scale_and_no_translation(tmp_path: Path) -> None:
    path = tmp_path / "hm.zarr"
    probability, _ = _write(path)
    image = _only([n for n in _nodes(path) if n.metadata.get("name") == "probability"], Multiscales)
    assert _transforms(image) == {"scale": [1.0, 1.0]}
    assert all("unit" not in axis for axis in image.metadata["axes"])
    np.testing.assert_array_equal(np.asarray(image.data[0]), probability)


@pytest.mark.parametrize("geometry", [{}, {"slide_mpp": MPP, "cell_origin_level0": ORIGIN,
                                           "cell_level0_px": CELL_PX}])  # fmt: skip
def test_valid_ngff_05_image_with_tissue_label(tmp_path: Path, geometry: dict[str, Any]) -> None:
    path = tmp_path / "hm.zarr"
    _write(path, **geometry)
    group = zarr.open_group(str(path), mode="r")
    model = Image.from_zarr(group)  # pydantic models of the NGFF 0.5 spec: raises if invalid
    assert model.ome_attributes.version == "0.5"
    assert [d.path for d in model.ome_attributes.multiscales[0].datasets] == ["probability"]
    assert model.labels is not None and model.labels.label_paths == ["tissue"]
    assert group["probability"].metadata.dimension_names == ("y", "x")


def test_placement_arguments_all_or_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        HeatmapWriter(tmp_path / "a.zarr", SHAPE, slide_mpp=MPP)
    with pytest.raises(ValueError, match="positive"):
        HeatmapGeometry(0.0, ORIGIN, CELL_PX)
    with pytest.raises(ValueError, match="reserved"):
        HeatmapWriter(tmp_path / "b.zarr", SHAPE).update_attrs(ome={})


def test_reads_heatmaps_written_before_ome_metadata(tmp_path: Path) -> None:
    """The earlier layout: same format version, no ``ome``, ``labels`` or dimension names."""
    path = tmp_path / "old.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    prob = np.array([[0.25, np.nan], [np.nan, 0.75]], np.float32)
    group.create_array("probability", shape=(2, 2), dtype="float32", fill_value=np.nan)[...] = prob
    group.create_array("tissue", shape=(2, 2), dtype="bool", fill_value=False)[...] = ~np.isnan(
        prob
    )
    group.attrs.update({"format": "slidescan-heatmap", "format_version": "1", "slide_mpp": 0.5})
    probability, tissue, attrs = read_heatmap(path)
    np.testing.assert_array_equal(probability, prob)
    np.testing.assert_array_equal(tissue, ~np.isnan(prob))
    assert attrs["slide_mpp"] == 0.5 and "ome" not in attrs
    group.attrs["format_version"] = "2"
    with pytest.raises(SlidescanError, match="unsupported"):
        read_heatmap(path)


def test_scanned_heatmap_overlays_the_slide_in_micrometres(tmp_path: Path, weights: Path) -> None:
    """End to end: a purple square of known place on a synthetic slide; the tissue label cells,
    placed by the OME metadata, cover exactly the square's pixels in µm."""
    at_um = (2 * CELL_UM, 1 * CELL_UM)  # (x, y): cols 2-3, rows 1-2 of a 4×4-cell slide
    rgb = square_image(SLIDE_MPP, 4 * CELL_UM, 2 * CELL_UM, at_um)
    slide = write_pyramid(tmp_path / "square.tif", rgb, mpp=SLIDE_MPP)
    out = tmp_path / "square.zarr"
    scan_slide(slide, out, weights=weights, workers=0, device="cpu", progress=False)

    probability, tissue, attrs = read_heatmap(out)
    assert attrs["format_version"] == "1" and attrs["slide_mpp"] == SLIDE_MPP
    nodes = _nodes(out)
    image = _only([n for n in nodes if n.metadata.get("name") == "probability"], Multiscales)
    np.testing.assert_array_equal(np.asarray(image.data[0]), probability)
    label = _only(nodes, Label)
    mask = np.asarray(label.data[0]) == 1
    np.testing.assert_array_equal(mask, tissue)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 2, 2, 3)

    t = _transforms(label)
    purple = np.argwhere((rgb != 255).any(axis=2))  # (y, x) level-0 pixels of the square
    for axis, cells in ((0, rows), (1, cols)):
        low = t["translation"][axis] + (cells.min() - 0.5) * t["scale"][axis]
        high = t["translation"][axis] + (cells.max() + 0.5) * t["scale"][axis]
        # In the viewer, level-0 pixel j is centred on j·mpp and spans ±½ pixel around it.
        assert low == pytest.approx((purple[:, axis].min() - 0.5) * SLIDE_MPP)
        assert high == pytest.approx((purple[:, axis].max() + 0.5) * SLIDE_MPP)
    on_disk = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]
    assert on_disk["version"] == "0.5"
