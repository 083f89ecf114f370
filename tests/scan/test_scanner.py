"""Scanner on synthetic slides: outputs, geometry, resampling, failures that leave nothing behind.

A tiny randomly initialised pcamnet-s (seeded) stands in for the shipped weights: these tests are
about plumbing and geometry, not about whether the model finds tumour.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scan_helpers import CELL_UM, MODEL_MPP, SLIDE_MPP
from slide_fixtures import (
    square_image,
    tissue_image,
    write_png,
    write_pyramid,
    write_random_bytes,
    write_truncated,
)

import slidescan.engine.cell_scoring as cell_scoring
from slidescan import RESEARCH_USE_NOTICE, __version__
from slidescan.engine.weights import ModelCard, file_sha256, load_weights, save_weights
from slidescan.errors import SlidescanError
from slidescan.io.heatmap import read_heatmap
from slidescan.io.outputs import geojson_path, is_complete, read_report, report_path
from slidescan.io.slide import Slide, open_slide
from slidescan.models import create_model
from slidescan.scan.scan_result import ScanOptions, ScanResult, describe
from slidescan.scan.scanner import Scanner, scan_slide
from slidescan.scan.slide_geometry import mask_thumbnail
from slidescan.scan.slide_tiles import SlideTileDataset
from slidescan.scan.tiling import TileGrid, tissue_fraction


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    rgb = tissue_image(768, 1024)[0]
    tissue = write_pyramid(d / "tissue.tif", rgb, mpp=SLIDE_MPP)
    # Purple square covering exactly cells rows 1-2, cols 2-3 of a 4×4-cell slide.
    square = square_image(SLIDE_MPP, 4 * CELL_UM, 2 * CELL_UM, (2 * CELL_UM, 1 * CELL_UM))
    return {
        "tissue": tissue,
        "square": write_pyramid(d / "square.tif", square, mpp=SLIDE_MPP),
        "fine": write_pyramid(d / "fine.tif", tissue_image(900, 1200, seed=1)[0], mpp=0.243),
        "odd": write_pyramid(d / "odd.tif", tissue_image(768, 1024, seed=2)[0], mpp=0.3),
        "white": write_pyramid(
            d / "white.tif", np.full((768, 1024, 3), 255, np.uint8), mpp=SLIDE_MPP
        ),
        "no_mpp": write_pyramid(d / "no_mpp.tif", rgb, mpp=None),
        "truncated": write_truncated(d / "truncated.tif", tissue, keep=0.5),
        "random": write_random_bytes(d / "random.svs"),
    }


def scanner(weights: Path, **options: Any) -> Scanner:
    opts = {"workers": 0, "device": "cpu", "progress": False, **options}
    return Scanner(load_weights(weights), ScanOptions(**opts))


def scan(weights: Path, slide: Path, out: Path, **options: Any) -> ScanResult:
    overlay = options.pop("overlay", None)
    return scanner(weights, **options).scan(slide, out, overlay)


def leftovers(folder: Path) -> list[str]:
    """Every entry in ``folder``, hidden ones (partial outputs) included."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def done(
    tmp_path_factory: pytest.TempPathFactory, weights: Path, slides: dict[str, Path]
) -> ScanResult:
    out = tmp_path_factory.mktemp("done") / "tissue.zarr"
    return scan(weights, slides["tissue"], out, overlay=out.with_suffix(".png"))


# --- outputs -----------------------------------------------------------------------------------


def test_outputs_exist_and_are_complete(done: ScanResult) -> None:
    folder = done.heatmap.parent
    assert leftovers(folder) == [
        "tissue.geojson", "tissue.json", "tissue.png", "tissue.zarr"
    ]  # no partials  # fmt: skip
    assert done.report == report_path(done.heatmap) == folder / "tissue.json"
    assert is_complete(done.heatmap)
    assert done.tiles > 0 and done.seconds > 0


def test_scan_slide_is_the_one_call_python_api(
    tmp_path: Path, weights: Path, slides: dict[str, Path]
) -> None:
    out = tmp_path / "api.zarr"
    result = scan_slide(
        str(slides["square"]), str(out), weights=weights, workers=0, device="cpu", progress=False
    )
    assert result.heatmap == out and is_complete(out)
    assert result.tiles == 4  # the 2×2-cell square
    assert read_report(out)["settings"]["weights_sha256"] == load_weights(weights).sha256


def test_heatmap_nan_exactly_off_tissue(done: ScanResult, slides: dict[str, Path]) -> None:
    probability, tissue, attrs = read_heatmap(done.heatmap)
    assert probability.shape == tissue.shape == (4, 6)  # 768/192 × ceil(1024/192): edges too
    assert tissue.any() and not tissue.all()
    np.testing.assert_array_equal(np.isnan(probability), ~tissue)
    assert np.all((probability[tissue] >= 0) & (probability[tissue] <= 1))
    assert int(tissue.sum()) == done.tiles == attrs["tiles_scanned"]

    # The stored mask is exactly "tissue fraction of the cell >= min_tissue".
    grid = TileGrid.from_attrs(attrs["grid"])
    with open_slide(slides["tissue"]) as slide:
        mask, ds = mask_thumbnail(slide)
    fraction = tissue_fraction(mask, ds, grid)
    np.testing.assert_array_equal(tissue, fraction >= attrs["min_tissue"])
    assert attrs["min_tissue"] == 0.25


def test_heatmap_attributes(done: ScanResult, slides: dict[str, Path], weights: Path) -> None:
    _, _, attrs = read_heatmap(done.heatmap)
    assert attrs["slide_path"] == "tissue.tif"  # no directories: they may identify patients
    assert attrs["slide_dimensions"] == [1024, 768]
    assert attrs["slide_mpp"] == pytest.approx(SLIDE_MPP)
    assert attrs["mpp"] == pytest.approx(MODEL_MPP)
    assert attrs["level"] == 1 and attrs["downsample"] == 2.0
    assert attrs["patch_size"] == 96 and attrs["stride"] == 96
    assert attrs["grid_origin_level0"] == [0, 0]
    assert attrs["cell_level0_px"] == pytest.approx(192)
    assert attrs["model"] == "pcamnet-s"
    assert attrs["weights_sha256"] == file_sha256(weights)
    assert attrs["slidescan_version"] == __version__
    # The model card's (no --threshold; an uncalibrated card seeds at its tile threshold).
    assert attrs["seed_threshold"] == attrs["extent_threshold"] == 0.5
    assert attrs["tiles_scanned"] == done.tiles
    assert attrs["wall_seconds"] >= 0
    assert attrs["call"]["category"] == done.call.category
    assert len(attrs["call"]["lesions"]) == len(done.call.lesions)
    assert attrs["distribution"] == done.distribution.to_dict()
    assert attrs["notice"] == RESEARCH_USE_NOTICE


def test_json_report(done: ScanResult) -> None:
    report = json.loads(done.report.read_text())
    assert report == read_report(done.heatmap)
    assert report["notice"] == RESEARCH_USE_NOTICE
    assert report["slide"] == "tissue.tif" and report["heatmap"] == "tissue.zarr"
    assert report["call"] == done.call.to_dict()
    assert report["tiles_scanned"] == done.tiles
    attrs = read_heatmap(done.heatmap)[2]
    assert report["attributes"] == {k: v for k, v in attrs.items() if k in report["attributes"]}
    assert report["attributes"]["weights_sha256"] == attrs["weights_sha256"]
    line = describe(done)
    assert "\n" not in line and "research use only" in line and "tissue.tif" in line


def test_overlay_png(done: ScanResult) -> None:
    assert done.overlay == done.heatmap.with_suffix(".png")
    with Image.open(done.overlay) as image:
        image.verify()
    with Image.open(done.overlay) as image:
        assert image.format == "PNG" and image.width >= 200 and image.height >= 200


# --- geometry ----------------------------------------------------------------------------------


def test_cells_map_to_slide_coordinates(done: ScanResult) -> None:
    _, _, attrs = read_heatmap(done.heatmap)
    grid = TileGrid.from_attrs(attrs["grid"])
    assert grid.scale == pytest.approx(2.0)  # 0.972 / 0.486
    assert grid.shape == (4, 6) and grid.origin == (0, 0)
    assert grid.cell_to_level0(0, 0) == (0, 0)
    assert grid.cell_to_level0(1, 2) == (384, 192)  # (x, y) = (col, row) × 96 × 2
    assert grid.cell_to_level0(3, 4) == (768, 576)
    assert grid.cell_region_level0(1, 2) == pytest.approx((384, 192, 576, 384))
    assert grid.cell_center_level0(3, 4) == pytest.approx((864, 672))


def test_tissue_cells_are_where_the_tissue_is(
    tmp_path: Path, weights: Path, slides: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[tuple[int, int], tuple[int, int], float]] = []
    original = Slide.read_at_mpp

    def spy(self: Slide, location: Any, size: Any, target_mpp: float) -> np.ndarray:
        reads.append((tuple(location), tuple(size), target_mpp))
        return original(self, location, size, target_mpp)

    monkeypatch.setattr(Slide, "read_at_mpp", spy)
    result = scan(weights, slides["square"], tmp_path / "sq.zarr", block=1)
    probability, tissue, attrs = read_heatmap(result.heatmap)
    assert tissue.shape == (4, 4)
    assert sorted(map(tuple, np.argwhere(tissue).tolist())) == [(1, 2), (1, 3), (2, 2), (2, 3)]
    np.testing.assert_array_equal(np.isnan(probability), ~tissue)
    grid = TileGrid.from_attrs(attrs["grid"])
    # The square is level-0 x in [384, 768), y in [192, 576): each tissue cell lies inside it.
    for r, c in np.argwhere(tissue):
        x0, y0, x1, y1 = grid.cell_region_level0(int(r), int(c))
        assert 384 <= x0 < x1 <= 768 and 192 <= y0 < y1 <= 576
    # One read per cell (block=1), at the cell's level-0 origin, one patch in model pixels.
    assert sorted(reads) == sorted(
        (grid.cell_to_level0(int(r), int(c)), (96, 96), MODEL_MPP) for r, c in np.argwhere(tissue)
    )


def test_stride_changes_grid_geometry(tmp_path: Path, weights: Path, slides: dict[str, Path]):
    result = scan(weights, slides["square"], tmp_path / "s48.zarr", stride=48)
    probability, tissue, attrs = read_heatmap(result.heatmap)
    grid = TileGrid.from_attrs(attrs["grid"])
    assert attrs["stride"] == grid.stride == 48 and attrs["cell_level0_px"] == pytest.approx(96)
    # Slide is 768 px = 384 model px: floor((384 - 96) / 48) + 1 = 7 cells a side.
    assert grid.shape == probability.shape == (7, 7)
    assert grid.cell_to_level0(2, 3) == (288, 192)
    # A cell represents the central 48×48 model px (96×96 level-0 px) of its patch.
    assert grid.cell_region_level0(0, 0) == pytest.approx((48, 48, 144, 144))
    assert tissue.sum() >= 4
    for r, c in np.argwhere(tissue):
        x0, y0, x1, y1 = grid.cell_region_level0(int(r), int(c))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert 384 <= cx <= 768 and 192 <= cy <= 576


def test_resamples_from_best_pyramid_level(
    tmp_path: Path, weights: Path, slides: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    levels: set[int] = set()
    original = Slide.read_region

    def spy(self: Slide, location: Any, level: int, size: Any) -> np.ndarray:
        levels.add(level)
        return original(self, location, level, size)

    result = scanner(weights).scan(slides["fine"], tmp_path / "fine.zarr")
    _, _, attrs = read_heatmap(result.heatmap)
    # 0.243 µm/px, levels at 1, 2, 4: level 2 (0.972 µm/px) matches the model exactly.
    assert attrs["slide_mpp"] == pytest.approx(0.243)
    assert attrs["level"] == 2 and attrs["downsample"] == 4.0
    width, height = attrs["slide_dimensions"]
    expected = (
        math.ceil(height * 0.243 / MODEL_MPP / 96),
        math.ceil(width * 0.243 / MODEL_MPP / 96),
    )
    assert tuple(attrs["grid"]["shape"]) == expected == (3, 4)  # 225 × 300 model px
    assert attrs["cell_level0_px"] == pytest.approx(384)

    monkeypatch.setattr(Slide, "read_region", spy)
    grid = TileGrid.from_attrs(attrs["grid"])
    SlideTileDataset(slides["fine"], grid, np.array([[1, 1]]))[0]
    assert levels == {2}  # tiles come from the matching level, not from level 0


# --- memory: reads are bounded by the block, never a whole level -------------------------------


@pytest.mark.parametrize(("key", "cells"), [("tissue", 24), ("odd", 12)])
def test_reads_are_bounded_by_the_block(
    tmp_path: Path,
    weights: Path,
    slides: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    cells: int,
) -> None:
    block, patch, stride = 2, 96, 96
    tile_reads: list[tuple[int, int, int]] = []  # (level, w, h) read while scanning tiles
    thumb_reads: list[tuple[int, int, int]] = []
    in_thumbnail = [False]
    original_read, original_thumb = Slide.read_region, Slide.thumbnail

    def read_spy(self: Slide, location: Any, level: int, size: Any) -> np.ndarray:
        (thumb_reads if in_thumbnail[0] else tile_reads).append((level, *map(int, size)))
        return original_read(self, location, level, size)

    def thumb_spy(self: Slide, max_size: int) -> Any:
        in_thumbnail[0] = True
        try:
            return original_thumb(self, max_size)
        finally:
            in_thumbnail[0] = False

    monkeypatch.setattr(Slide, "read_region", read_spy)
    monkeypatch.setattr(Slide, "thumbnail", thumb_spy)
    result = scan(
        weights, slides[key], tmp_path / "m.zarr", block=block, batch_size=4, min_tissue=0.0
    )
    assert result.tiles == cells  # every cell: several blocks and batches
    assert tile_reads and thumb_reads

    _, _, attrs = read_heatmap(result.heatmap)
    level = attrs["level"]
    # Level pixels per model pixel: 1 for the 0.486 slide (level 1 is 0.972 µm/px), 1.62 for
    # the 0.3 slide (level 1 is 0.6 µm/px, resampled down to 0.972).
    factor = MODEL_MPP / (attrs["slide_mpp"] * attrs["downsample"])
    assert factor == pytest.approx({"tissue": 1.0, "odd": 1.62}[key])
    margin = 8  # resampling context read around each region
    side = (block * stride + patch) * factor + margin
    assert {lvl for lvl, _, _ in tile_reads} == {level} == {1}
    assert max(w for _, w, _ in tile_reads) <= side
    assert max(h for _, _, h in tile_reads) <= side
    assert len(tile_reads) == math.ceil(attrs["grid"]["shape"][0] / block) * math.ceil(
        attrs["grid"]["shape"][1] / block
    )  # one read per block, not per tile
    # Never the whole tile level in one go.
    with open_slide(slides[key]) as slide:
        level_w, level_h = slide.level_dimensions[level]
    assert max(w * h for _, w, h in tile_reads) < level_w * level_h
    # Thumbnail reads are chunked too.
    assert max(max(w, h) for _, w, h in thumb_reads) <= 4096 + margin


# --- edge cases and failures -------------------------------------------------------------------


def test_tissue_in_the_edge_strip_is_scanned(tmp_path: Path, weights: Path) -> None:
    # 1100 px wide at 2 level-0 px per model px: 5 whole 192-px cells and a 140 px strip, where
    # all the tissue is. A grid of whole patches only would never look at it.
    rgb = np.full((768, 1100, 3), 255, np.uint8)
    rgb[100:700, 960:] = (170, 90, 180)  # H&E-like purple
    slide = write_pyramid(tmp_path / "edge.tif", rgb, mpp=SLIDE_MPP)
    result = scan(weights, slide, tmp_path / "edge.zarr")
    probability, tissue, attrs = read_heatmap(result.heatmap)
    assert tissue.shape == (4, 6)
    assert result.tiles > 0 and tissue[:, 5].any() and not tissue[:, :5].any()
    assert np.isfinite(probability[tissue]).all()


def test_no_tissue_gives_negative_call(tmp_path: Path, weights: Path, slides: dict[str, Path]):
    result = scan(weights, slides["white"], tmp_path / "white.zarr")
    probability, tissue, attrs = read_heatmap(result.heatmap)
    assert result.tiles == 0 and attrs["tiles_scanned"] == 0
    assert probability.shape == (4, 6)
    assert np.isnan(probability).all() and not tissue.any()
    assert not result.call.positive and result.call.category == "negative"
    assert result.call.tissue_tiles == 0 and result.call.lesions == ()
    assert read_report(result.heatmap)["call"]["positive"] is False


def test_no_mpp_needs_mpp_and_leaves_nothing(
    tmp_path: Path, weights: Path, slides: dict[str, Path]
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(SlidescanError, match="default_mpp") as info:
        scan(weights, slides["no_mpp"], out_dir / "x.zarr", overlay=out_dir / "x.png")
    assert "\n" not in str(info.value)
    assert leftovers(out_dir) == []

    result = scan(weights, slides["no_mpp"], out_dir / "x.zarr", mpp=SLIDE_MPP)
    _, _, attrs = read_heatmap(result.heatmap)
    assert attrs["slide_mpp"] == pytest.approx(SLIDE_MPP) and attrs["level"] == 1
    assert result.tiles > 0
    assert leftovers(out_dir) == ["x.geojson", "x.json", "x.zarr"]


@pytest.mark.parametrize("key", ["truncated", "random"])
def test_unreadable_slide_leaves_nothing(
    tmp_path: Path, weights: Path, slides: dict[str, Path], key: str
) -> None:
    with pytest.raises(SlidescanError, match=slides[key].name) as info:
        scan(weights, slides[key], tmp_path / "x.zarr", overlay=tmp_path / "x.png", mpp=0.5)
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(
    tmp_path: Path, weights: Path, slides: dict[str, Path]
) -> None:
    out = tmp_path / "x.zarr"
    scan(weights, slides["square"], out)
    marker = out / "marker.txt"
    marker.write_text("old")
    with pytest.raises(SlidescanError, match="already exists"):
        scan(weights, slides["square"], out)
    assert marker.exists()

    result = scan(weights, slides["square"], out, overwrite=True, threshold=0.0)
    assert not marker.exists()
    _, _, attrs = read_heatmap(out)
    assert attrs["seed_threshold"] == 0.0  # the new scan's
    assert read_report(out)["call"]["seed_threshold"] == 0.0
    assert result.tiles == attrs["tiles_scanned"]
    assert leftovers(tmp_path) == ["x.geojson", "x.json", "x.zarr"]


def test_stale_partials_are_replaced(tmp_path: Path, weights: Path, slides: dict[str, Path]):
    # What a killed scan leaves: a partial heatmap and a partial report.
    (tmp_path / ".x.zarr.partial").mkdir()
    (tmp_path / ".x.zarr.partial" / "junk").write_text("junk")
    (tmp_path / ".x.json.partial").write_text("{")
    scan(weights, slides["square"], tmp_path / "x.zarr")
    assert leftovers(tmp_path) == ["x.geojson", "x.json", "x.zarr"]


def test_heatmap_without_report_is_redone(
    tmp_path: Path, weights: Path, slides: dict[str, Path]
) -> None:
    # Killed between the two renames: the heatmap is in place but not its report (= incomplete).
    out = tmp_path / "x.zarr"
    scan(weights, slides["square"], out)
    report_path(out).unlink()
    (out / "marker.txt").write_text("old")
    assert not is_complete(out)
    result = scan(weights, slides["square"], out)
    assert is_complete(out) and not (out / "marker.txt").exists()
    assert read_heatmap(out)[2]["tiles_scanned"] == result.tiles
    assert leftovers(tmp_path) == ["x.geojson", "x.json", "x.zarr"]


def test_foreign_folder_is_not_deleted(tmp_path: Path, weights: Path, slides: dict[str, Path]):
    # Something at the output path that is not a slidescan heatmap is refused without overwrite.
    out = tmp_path / "x.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(SlidescanError, match="already exists"):
        scan(weights, slides["square"], out)
    assert (out / "precious.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == ["x.zarr"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_scan_leaves_nothing(
    tmp_path: Path,
    weights: Path,
    slides: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    error: type[BaseException],
) -> None:
    calls = []
    original = cell_scoring.predict_probs

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:
            raise error("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(cell_scoring, "predict_probs", flaky)
    with pytest.raises(error if error is KeyboardInterrupt else SlidescanError, match="boom"):
        scan(
            weights, slides["square"], tmp_path / "x.zarr", overlay=tmp_path / "x.png",
            block=1, batch_size=1,
        )  # fmt: skip
    assert len(calls) == 2  # the first batch was written to the partial heatmap
    assert leftovers(tmp_path) == []


def test_failure_in_overlay_leaves_nothing(
    tmp_path: Path, weights: Path, slides: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("slidescan.report.overlay.render_overlay", broken)
    with pytest.raises(OSError, match="disk full"):
        scan(weights, slides["square"], tmp_path / "x.zarr", overlay=tmp_path / "x.png")
    assert leftovers(tmp_path) == []


def test_custom_threshold_is_used(tmp_path: Path, weights: Path, slides: dict[str, Path]):
    low = scan(weights, slides["square"], tmp_path / "low.zarr", threshold=0.0)
    high = scan(weights, slides["square"], tmp_path / "high.zarr", threshold=1.0)
    assert low.call.seed_threshold == 0.0 and low.call.positive
    assert low.call.positive_tiles == low.tiles == 4
    assert high.call.seed_threshold == 1.0 and not high.call.positive
    # --threshold sets the seed; the extent stays at the card's tile threshold unless higher.
    assert low.call.extent_threshold == 0.0 and high.call.extent_threshold == 0.5
    for result, threshold in ((low, 0.0), (high, 1.0)):
        _, _, attrs = read_heatmap(result.heatmap)
        assert attrs["seed_threshold"] == threshold == attrs["call"]["seed_threshold"]
        assert read_report(result.heatmap)["call"]["seed_threshold"] == threshold
    # Same model and slide: only the threshold differs.
    assert low.call.max_probability == pytest.approx(high.call.max_probability)
    # The QuPath annotations: the positive scan's one lesion covers its 4 tiles' cells.
    (feature,) = json.loads(geojson_path(low.heatmap).read_text())["features"]
    _, _, attrs = read_heatmap(low.heatmap)
    cell_um = attrs["cell_level0_px"] * attrs["slide_mpp"]
    assert feature["properties"]["measurements"]["Lesion area µm^2"] == pytest.approx(
        4 * cell_um**2, rel=1e-3
    )
    assert json.loads(geojson_path(high.heatmap).read_text())["features"] == []


FORK = multiprocessing.get_start_method() == "fork"  # workers inherit monkeypatches


@pytest.mark.skipif(not FORK, reason="needs fork-started DataLoader workers")
@pytest.mark.parametrize("dense", [False, True])
def test_workers_score_and_give_the_same_heatmap(
    tmp_path: Path,
    weights: Path,
    slides: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    dense: bool,
) -> None:
    # On a CPU each worker scores its own blocks with its own model: same numbers as in-process.
    inline = scan(weights, slides["tissue"], tmp_path / "w0.zarr", workers=0, dense=dense)
    pids = tmp_path / "pids.txt"
    name = "predict_dense_probs" if dense else "predict_probs"
    original = getattr(cell_scoring, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        with pids.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(cell_scoring, name, recording)
    result = scan(weights, slides["tissue"], tmp_path / "w2.zarr", workers=2, dense=dense)
    scorers = set(pids.read_text().split())
    assert scorers and str(os.getpid()) not in scorers  # scored in the workers only
    a, ta, _ = read_heatmap(inline.heatmap)
    b, tb, _ = read_heatmap(result.heatmap)
    np.testing.assert_array_equal(ta, tb)
    assert np.isfinite(b).sum() == result.tiles > 0
    np.testing.assert_allclose(a, b, atol=1e-5, equal_nan=True)


@pytest.mark.skipif(not FORK, reason="needs fork-started DataLoader workers")
def test_model_failure_in_a_worker_is_one_line(
    tmp_path: Path, weights: Path, slides: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(cell_scoring, "predict_probs", broken)  # inherited by forked workers
    out = tmp_path / "x.zarr"
    with pytest.raises(SlidescanError) as info:
        scan(weights, slides["tissue"], out, workers=2)
    message = str(info.value)
    assert message == "tissue.tif: inference failed: out of memory", message
    assert isinstance(info.value.__cause__, cell_scoring.ScoringError)  # raised in a worker
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_dense_scan_equals_patch_by_patch_stride_32(
    tmp_path: Path, weights: Path, backend: str
) -> None:
    # At the model's own resolution no resampling happens, so the fully convolutional dense map
    # must reproduce overlapping stride-32 patches exactly (up to float rounding), TTA included.
    slide = write_pyramid(tmp_path / "m.tif", tissue_image(700, 600, seed=3)[0], mpp=MODEL_MPP)
    for tta in (False, True):
        dense = scan(
            weights, slide, tmp_path / f"d{tta}.zarr", dense=True, block=4, tta=tta,
            backend=backend, min_tissue=0.0,
        )  # fmt: skip
        patches = scan(
            weights, slide, tmp_path / f"p{tta}.zarr", stride=32, tta=tta, backend=backend,
            min_tissue=0.0,
        )  # fmt: skip
        p_dense, t_dense, attrs = read_heatmap(dense.heatmap)
        p_patch, t_patch, _ = read_heatmap(patches.heatmap)
        assert attrs["dense"] and attrs["stride"] == 32
        np.testing.assert_array_equal(t_dense, t_patch)
        assert np.isfinite(p_dense).sum() == dense.tiles > 50
        np.testing.assert_allclose(p_dense, p_patch, atol=1e-5, equal_nan=True)
        assert dense.call.positive == patches.call.positive
        assert dense.call.category == patches.call.category
        assert dense.call.max_probability == pytest.approx(patches.call.max_probability, abs=1e-5)


def test_dense_without_a_fully_convolutional_model_scores_overlapping_tiles(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    path = tmp_path / "v2.pt"
    save_weights(path, create_model("pcamnet-v2"), ModelCard(model="pcamnet-v2", mpp=MODEL_MPP))
    slide = write_pyramid(tmp_path / "m.tif", tissue_image(500, 400, seed=3)[0], mpp=MODEL_MPP)
    dense = scan(path, slide, tmp_path / "d.zarr", dense=True, min_tissue=0.0, backend="torch")
    patches = scan(path, slide, tmp_path / "p.zarr", stride=32, min_tissue=0.0, backend="torch")
    p_dense, _, attrs = read_heatmap(dense.heatmap)
    p_patch, _, _ = read_heatmap(patches.heatmap)
    assert attrs["stride"] == 32 and attrs["dense_method"] == "overlapping tiles"
    np.testing.assert_allclose(p_dense, p_patch, atol=1e-6, equal_nan=True)
    with pytest.raises(SlidescanError, match="stride 32"):
        scanner(path, dense=True, stride=48)


def test_plain_png_scans_in_process_like_a_pyramid(tmp_path: Path, weights: Path) -> None:
    # The fallback reader holds a plain image whole; it is read without DataLoader workers, and
    # gives the same heatmap as the same pixels in a pyramidal TIFF.
    rgb = tissue_image(600, 500, seed=4)[0]
    png = write_png(tmp_path / "photo.png", rgb)
    tif = write_pyramid(tmp_path / "photo.tif", rgb, mpp=SLIDE_MPP)
    a = scan(weights, png, tmp_path / "png.zarr", workers=2, mpp=SLIDE_MPP)
    b = scan(weights, tif, tmp_path / "tif.zarr", workers=2)
    p_png, t_png, _ = read_heatmap(a.heatmap)
    p_tif, t_tif, _ = read_heatmap(b.heatmap)
    assert a.tiles == b.tiles > 0
    np.testing.assert_array_equal(t_png, t_tif)
    np.testing.assert_allclose(p_png, p_tif, atol=1e-4, equal_nan=True)


# --- stain normalisation -------------------------------------------------------------------


def test_stain_normalisation_is_fitted_per_slide_and_recorded(
    tmp_path: Path, weights: Path, slides: dict[str, Path]
) -> None:
    from slidescan.engine.stain_norm import fit_stain_reference

    loaded = load_weights(weights)
    with pytest.raises(SlidescanError, match="carry no reinhard stain reference"):
        scanner(weights, stain_norm="reinhard")
    loaded.card.stain_reference = fit_stain_reference(tissue_image(192, 192, seed=5)[0])
    with_ref = tmp_path / "w.pt"
    save_weights(with_ref, loaded.model, loaded.card)
    plain = scanner(with_ref)
    assert "stain_norm" not in plain.settings()  # earlier results keep their fingerprint
    result = scan(with_ref, slides["tissue"], tmp_path / "t.zarr", stain_norm="reinhard")
    attrs = read_heatmap(result.heatmap)[2]
    assert attrs["stain_norm"]["method"] == "reinhard"
    assert result.slide_report is not None
    assert result.slide_report.settings["stain_norm"] == "reinhard"
    assert result.slide_report.fingerprint != plain.fingerprint(slides["tissue"])
