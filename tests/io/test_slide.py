"""Slide reading: levels, MPP, resampling geometry, fallback images and error messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from slide_fixtures import (
    PURPLE,
    square_image,
    tissue_image,
    write_png,
    write_pyramid,
    write_random_bytes,
    write_stripped_tiff,
    write_truncated,
)

import slidescan.io.image_backend as image_backend
import slidescan.io.slide as slide_module
from slidescan.errors import SlidescanError, redact_path
from slidescan.io.slide import open_slide

MPP = 0.25
SQUARE_UM = 100.0
SQUARE_AT_UM = (120.0, 80.0)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return tissue_image(768, 1024)[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, rgb: np.ndarray) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    pyramid = write_pyramid(d / "pyramid.tif", rgb, mpp=MPP)
    return {
        "pyramid": pyramid,
        "square": write_pyramid(
            d / "square.tif", square_image(MPP, 400.0, SQUARE_UM, SQUARE_AT_UM), mpp=MPP
        ),
        "inch": write_pyramid(d / "inch.tif", rgb, mpp=MPP, unit="INCH"),
        "no_mpp": write_pyramid(d / "no_mpp.tif", rgb, mpp=None),
        "truncated": write_truncated(d / "truncated.tif", pyramid, keep=0.5),
        "random": write_random_bytes(d / "random.svs"),
    }


def test_fixture_is_a_real_openslide_pyramid(files: dict[str, Path]) -> None:
    # Guards the fixture itself: OpenSlide must see all levels and the centimetre MPP.
    with openslide.OpenSlide(files["pyramid"]) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert osr.level_count == 3
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(MPP)


def test_levels_and_mpp(files: dict[str, Path]) -> None:
    with open_slide(files["pyramid"]) as slide:
        assert slide.dimensions == (1024, 768)
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.mpp == pytest.approx(MPP)
        assert slide.path == files["pyramid"]


def test_inch_resolution_gives_mpp(files: dict[str, Path]) -> None:
    with open_slide(files["inch"]) as slide:
        assert slide.mpp == pytest.approx(MPP)


def test_mpp_override_wins(files: dict[str, Path]) -> None:
    with open_slide(files["pyramid"], mpp=0.5) as slide:
        assert slide.mpp == 0.5


@pytest.mark.parametrize(
    ("target", "level"),
    [(0.1, 0), (0.25, 0), (0.4, 0), (0.5, 1), (0.972, 1), (0.5 * 1.009, 1), (1.0, 2), (8.0, 2)],
)
def test_best_level_for_mpp(files: dict[str, Path], target: float, level: int) -> None:
    with open_slide(files["pyramid"]) as slide:
        assert slide.best_level_for_mpp(target) == level


@pytest.mark.parametrize("target", [0.2, 0.25, 0.5, 0.972, 2.0])
def test_read_at_mpp_scales_a_known_square(files: dict[str, Path], target: float) -> None:
    with open_slide(files["square"]) as slide:
        side = round(400.0 / target)
        region = slide.read_at_mpp((0, 0), (side, side), target)
    assert region.shape == (side, side, 3) and region.dtype == np.uint8
    dark = region.mean(axis=2) < 200
    ys, xs = np.nonzero(dark)
    assert dark.sum(axis=1).max() == pytest.approx(SQUARE_UM / target, abs=1.01)
    assert xs.min() == pytest.approx(SQUARE_AT_UM[0] / target, abs=1.01)
    assert ys.min() == pytest.approx(SQUARE_AT_UM[1] / target, abs=1.01)
    cx, cy = (round((a + SQUARE_UM / 2) / target) for a in SQUARE_AT_UM)
    assert np.abs(region[cy, cx].astype(int) - PURPLE).max() <= 2


def test_read_at_mpp_offset_location(files: dict[str, Path]) -> None:
    # The region's top-left is the level-0 location, whatever level it is read from.
    x0, y0 = round(SQUARE_AT_UM[0] / MPP), round(SQUARE_AT_UM[1] / MPP)
    with open_slide(files["square"]) as slide:
        region = slide.read_at_mpp((x0, y0), (10, 10), 1.0)
    assert np.abs(region.astype(int) - PURPLE).max() <= 2


def test_read_at_native_levels_is_exact(files: dict[str, Path], rgb: np.ndarray) -> None:
    with open_slide(files["pyramid"]) as slide:
        np.testing.assert_array_equal(
            slide.read_at_mpp((64, 32), (100, 50), MPP), rgb[32:82, 64:164]
        )
        np.testing.assert_array_equal(
            slide.read_at_mpp((64, 32), (50, 25), 2 * MPP), slide.read_region((64, 32), 1, (50, 25))
        )


def test_read_region_outside_is_white(files: dict[str, Path], rgb: np.ndarray) -> None:
    with open_slide(files["pyramid"]) as slide:
        region = slide.read_region((-20, 760), 0, (40, 20))
    assert region.shape == (20, 40, 3)
    assert (region[:, :20] == 255).all() and (region[8:] == 255).all()
    np.testing.assert_array_equal(region[:8, 20:], rgb[760:768, 0:20])


def test_thumbnail(files: dict[str, Path], rgb: np.ndarray) -> None:
    with open_slide(files["pyramid"]) as slide:
        thumb, downsample = slide.thumbnail(200)
    assert thumb.shape == (150, 200, 3)
    assert downsample == pytest.approx(1024 / 200)
    small = np.asarray(rgb, float)[::8, ::8].mean(axis=(0, 1))
    assert np.abs(thumb.mean(axis=(0, 1)) - small).max() < 3


def test_thumbnail_never_upsamples(files: dict[str, Path]) -> None:
    with open_slide(files["pyramid"]) as slide:
        thumb, downsample = slide.thumbnail(5000)
    assert thumb.shape == (768, 1024, 3) and downsample == 1.0


def test_thumbnail_in_chunks_matches_one_read(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_slide(files["pyramid"]) as slide:
        whole, _ = slide.thumbnail(300)
        monkeypatch.setattr(slide_module, "_THUMBNAIL_READ_PX", 64)
        chunked, _ = slide.thumbnail(300)
    # Chunk seams may only differ by float rounding in the resampling weights.
    assert np.abs(whole.astype(int) - chunked).max() <= 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlidescanError, match=r"nothere\.svs: file not found"):
        open_slide(tmp_path / "nothere.svs")


@pytest.mark.parametrize("key", ["truncated", "random"])
def test_unreadable_files(files: dict[str, Path], key: str) -> None:
    name = files[key].name
    # The failure may come on open or on the first read of missing data.
    with (
        pytest.raises(SlidescanError, match=name) as info,
        open_slide(files[key], mpp=0.5) as slide,
    ):
        slide.read_region((0, 0), len(slide.level_dimensions) - 1, (64, 64))
        slide.read_region((0, 0), 0, slide.dimensions)
    assert "\n" not in str(info.value)


def test_no_mpp_is_a_clear_error(files: dict[str, Path]) -> None:
    with pytest.raises(SlidescanError, match=r"no_mpp\.tif: .*no microns-per-pixel.*mpp"):
        open_slide(files["no_mpp"])
    with open_slide(files["no_mpp"], mpp=0.5) as slide:
        assert slide.mpp == 0.5


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_mpp_override(files: dict[str, Path], bad: float) -> None:
    with pytest.raises(SlidescanError, match="mpp must be a positive number") as info:
        open_slide(files["pyramid"], mpp=bad)
    assert info.value.param == "mpp"


def test_png_fallback(tmp_path: Path) -> None:
    rgb, _ = tissue_image(60, 80)
    path = write_png(tmp_path / "tile.png", rgb, dpi=25_400 / 0.5)
    with open_slide(path) as slide:
        assert slide.dimensions == (80, 60) and slide.level_dimensions == ((80, 60),)
        assert slide.mpp == pytest.approx(0.5, rel=1e-3)
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (80, 60)), rgb)
        assert (slide.read_region((70, 50), 0, (20, 20))[10:] == 255).all()
        assert slide.read_at_mpp((0, 0), (40, 30), 1.0).shape == (30, 40, 3)
        thumb, downsample = slide.thumbnail(40)
        assert thumb.shape == (30, 40, 3) and downsample == 2.0


@pytest.mark.parametrize("dpi", [None, 72, 96])
def test_png_default_dpi_is_not_mpp(tmp_path: Path, dpi: float | None) -> None:
    path = write_png(tmp_path / "plain.png", np.full((8, 8, 3), 200, np.uint8), dpi=dpi)
    with pytest.raises(SlidescanError, match="plain.png: .*default_mpp") as info:
        open_slide(path)
    assert info.value.param == "default_mpp"


def test_png_with_alpha_is_white_where_transparent(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, :] = (10, 20, 30, 255)
    path = write_png(tmp_path / "alpha.png", rgba)
    with open_slide(path, mpp=1.0) as slide:
        region = slide.read_region((0, 0), 0, (4, 4))
    assert (region[:2] == (10, 20, 30)).all() and (region[2:] == 255).all()


def test_stripped_tiff_fallback(tmp_path: Path) -> None:
    rgb, _ = tissue_image(50, 70)
    path = write_stripped_tiff(tmp_path / "strips.tif", rgb, mpp=0.5)
    assert openslide.OpenSlide.detect_format(path) is None
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (70, 50)), rgb)


def test_huge_plain_image_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_backend, "MAX_FALLBACK_PIXELS", 100)
    path = write_png(tmp_path / "big.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(SlidescanError, match="big.png: .*tiled pyramidal TIFF"):
        open_slide(path, mpp=1.0)


@pytest.mark.data
def test_real_svs_with_mpp(data_dir: Path) -> None:
    with open_slide(data_dir / "wsi" / "CMU-1-Small-Region.svs") as slide:
        assert slide.mpp == pytest.approx(0.499)
        assert slide.dimensions == (2220, 2967)
        patch = slide.read_at_mpp((1000, 1000), (96, 96), 0.972)
    assert patch.shape == (96, 96, 3) and patch.std() > 5


@pytest.mark.data
def test_real_svs_without_mpp(data_dir: Path) -> None:
    path = data_dir / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs"
    with pytest.raises(SlidescanError, match=r"TCGA-CR-7395-01A-01-TS1\.svs: .*default_mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and len(slide.level_dimensions) == 2
        assert slide.best_level_for_mpp(0.972) == 0
        assert slide.best_level_for_mpp(1.0) == 1


@pytest.mark.parametrize("keep", [0.6, 0.85, 0.95])
def test_truncated_svs_says_so_with_or_without_mpp(
    data_dir: Path, tmp_path: Path, keep: float
) -> None:
    source = (data_dir / "wsi" / "CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(source[: int(len(source) * keep)])
    for mpp in (None, 0.5):  # never "no MPP metadata", never scanned as a plain image
        with pytest.raises(SlidescanError, match="OpenSlide does not recognise .*truncated"):
            open_slide(cut, mpp=mpp)


def test_tiff_without_a_readable_page_says_truncated(data_dir: Path, tmp_path: Path) -> None:
    source = (data_dir / "wsi" / "CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(source[: int(len(source) * 0.6)])
    with pytest.raises(SlidescanError, match="truncated or corrupt.*no image in the TIFF"):
        open_slide(cut, mpp=0.5)


# ------------------------------------------------------------------------------------------------
# Messages name the file, never the folders above it (they often carry patient identifiers)


def test_library_messages_quoting_the_path_are_cut_to_the_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "patient-0042-mrn-9876"
    folder.mkdir()
    png = folder / "node.png"
    png.write_bytes(b"not an image at all")  # PIL's message quotes the full path
    with pytest.raises(SlidescanError) as caught:
        open_slide(png)
    assert "node.png" in str(caught.value) and "patient-0042" not in str(caught.value)

    svs = write_pyramid(folder / "node.tif", tissue_image(256, 256)[0], mpp=0.5)

    def fails(path: object) -> None:
        raise openslide.OpenSlideError(f"Can't validate JPEG for directory 0: {path}")

    monkeypatch.setattr(openslide.OpenSlide, "detect_format", staticmethod(fails))
    with pytest.raises(SlidescanError) as caught:
        open_slide(svs)
    assert "Can't validate JPEG" in str(caught.value)
    assert "node.tif" in str(caught.value) and "patient-0042" not in str(caught.value)


def test_bounds_origin_from_openslide_properties(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_pyramid(tmp_path / "b.tif", tissue_image(256, 256)[0], mpp=0.5)
    with open_slide(path) as slide:
        assert slide.bounds_origin == (0, 0)  # no bounds: the image starts at level-0 (0, 0)
    real = openslide.OpenSlide.properties
    bounds = {"openslide.bounds-x": "100", "openslide.bounds-y": "50"}
    monkeypatch.setattr(
        openslide.OpenSlide, "properties", property(lambda self: {**real.fget(self), **bounds})
    )
    with open_slide(path, reader="openslide") as slide:
        assert slide.bounds_origin == (100, 50)


@pytest.mark.parametrize("folder", ["plain", "tab\tdir", "back\\slash", "quote'dir"])
def test_every_spelling_of_the_path_is_cut(tmp_path: Path, folder: str) -> None:
    path = tmp_path / "secret-study" / folder / "node.png"
    for text in (f"cannot open {path}", f"cannot identify image file {str(path)!r}",
                 f"at {path.as_posix()} and {path.absolute()}"):  # fmt: skip
        cut = redact_path(text, path)
        assert "secret-study" not in cut and "node.png" in cut, cut


def test_relative_paths_are_cut_whatever_the_hash_seed(tmp_path: Path) -> None:
    # The absolute spelling contains the relative one: it must be replaced first, every time.
    code = (
        "from pathlib import Path; from slidescan.errors import redact_path; "
        "p = Path('study-7/node.tif'); print(redact_path(f'x {p.resolve()} y {p}', p))"
    )
    for seed in ("0", "1", "2", "3", "4", "5"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            cwd=tmp_path, env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout  # fmt: skip
        assert out.strip() == "x node.tif y node.tif", (seed, out)
