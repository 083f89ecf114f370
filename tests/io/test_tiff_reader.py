"""The direct tiled-TIFF decoder must give OpenSlide's pixels, or step aside."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from slide_fixtures import tissue_image, write_pyramid

from slidescan.errors import SlidescanError
from slidescan.io.slide import open_slide
from slidescan.io.tiff_reader import open_tiff_reader


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiff_reader")
    rgb, _ = tissue_image(1100, 1300, seed=3)
    return {
        compression: write_pyramid(
            root / f"{compression}.tif", rgb, mpp=0.5, levels=3, tile=128, compression=compression
        )
        for compression in ("jpeg", "zlib")
    }


def _regions(dims: tuple[int, int], rng: np.random.Generator, n: int) -> list[tuple[int, ...]]:
    """Random boxes, some hanging over every edge of the level (outside reads white)."""
    w, h = dims
    boxes = [(-40, -30, 100, 90), (w - 60, h - 50, 150, 120), (w + 5, 10, 20, 20)]
    for _ in range(n):
        x, y = int(rng.integers(-64, w)), int(rng.integers(-64, h))
        boxes.append((x, y, int(rng.integers(1, 400)), int(rng.integers(1, 400))))
    return boxes


@pytest.mark.parametrize("compression", ["jpeg", "zlib"])
def test_direct_reads_equal_openslide_on_every_level(
    pyramids: dict[str, Path], compression: str
) -> None:
    rng = np.random.default_rng(0)
    with (
        open_slide(pyramids[compression]) as fast,
        open_slide(pyramids[compression], reader="openslide") as slow,
    ):
        assert fast.reader.startswith("tifffile+imagecodecs (levels 0,1,2)")
        assert slow.reader == "openslide"
        for level, dims in enumerate(fast.level_dimensions):
            ds = fast.level_downsamples[level]
            for x, y, w, h in _regions(dims, rng, 12):
                loc = (round(x * ds), round(y * ds))
                np.testing.assert_array_equal(
                    fast.read_region(loc, level, (w, h)),
                    slow.read_region(loc, level, (w, h)),
                    err_msg=f"level {level} box {(x, y, w, h)}",
                )
        # Resampled reads (the scanner's path) agree too.
        for loc in ((0, 0), (333, 517)):
            np.testing.assert_array_equal(
                fast.read_at_mpp(loc, (200, 150), 0.972), slow.read_at_mpp(loc, (200, 150), 0.972)
            )


def test_reader_is_safe_across_threads(pyramids: dict[str, Path]) -> None:
    rng = np.random.default_rng(1)
    with open_slide(pyramids["jpeg"]) as slide:
        boxes = _regions(slide.dimensions, rng, 40)
        expected = [slide.read_region((x, y), 0, (w, h)) for x, y, w, h in boxes]
        got: dict[int, np.ndarray] = {}

        def work(k: int) -> None:
            for i in range(k, len(boxes), 4):
                x, y, w, h = boxes[i]
                got[i] = slide.read_region((x, y), 0, (w, h))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(got) == len(boxes)
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(got[i], want)


def test_declines_when_its_pixels_differ_from_openslide(pyramids: dict[str, Path]) -> None:
    with open_slide(pyramids["jpeg"], reader="openslide") as slide:
        dims = slide.level_dimensions

        def honest(loc: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
            return slide.read_region(loc, level, size)

        def tinted(loc: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
            out = slide.read_region(loc, level, size).astype(np.int16)
            out[..., 2] = np.clip(out[..., 2] + 20, 0, 255)  # e.g. a wrong colour space
            return out.astype(np.uint8)

        def other_page_at_2(loc: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
            out = slide.read_region(loc, level, size)
            return out[::-1].copy() if level == 2 else out  # e.g. a different image there

        ds = slide.level_downsamples
        ok = open_tiff_reader(pyramids["jpeg"], "generic-tiff", dims, ds, honest)
        assert ok is not None and ok.levels == frozenset({0, 1, 2})
        ok.close()
        assert open_tiff_reader(pyramids["jpeg"], "generic-tiff", dims, ds, tinted) is None
        # A level whose check tile disagrees goes back to OpenSlide; the others stay direct.
        some = open_tiff_reader(pyramids["jpeg"], "generic-tiff", dims, ds, other_page_at_2)
        assert some is not None and some.levels == frozenset({0, 1})
        some.close()
        # Vendors whose files are not plain tiled pages keep OpenSlide.
        assert open_tiff_reader(pyramids["jpeg"], "philips", dims, ds, honest) is None
        assert open_tiff_reader(pyramids["jpeg"], None, dims, ds, honest) is None
        # A level OpenSlide reports but no page matches stays on OpenSlide.
        partial = open_tiff_reader(
            pyramids["jpeg"], "generic-tiff", (*dims[:2], (7, 7)), (*ds[:2], 4.0), honest
        )
        assert partial is not None and partial.levels == frozenset({0, 1})
        partial.close()


def test_unknown_reader_is_a_one_line_error(pyramids: dict[str, Path]) -> None:
    with pytest.raises(SlidescanError, match="reader must be one of auto, openslide"):
        open_slide(pyramids["jpeg"], reader="fast")


@pytest.mark.parametrize(
    ("name", "mpp", "levels"),
    [("CMU-1-Small-Region.svs", None, "0"), ("TCGA-CR-7395-01A-01-TS1.svs", 0.5, "0,1")],
)
def test_real_svs_jpeg_and_jpeg2000_match_openslide(
    data_dir: Path, name: str, mpp: float | None, levels: str
) -> None:
    """Aperio JPEG (RGB-tagged) and JPEG 2000 (33005) tiles: pixel-identical to OpenSlide."""
    path = data_dir / "wsi" / name
    rng = np.random.default_rng(2)
    with open_slide(path, mpp=mpp) as fast, open_slide(path, mpp=mpp, reader="openslide") as slow:
        assert fast.reader.startswith(f"tifffile+imagecodecs (levels {levels})")
        w, h = fast.dimensions
        for x, y, bw, bh in _regions((w, h), rng, 6):
            np.testing.assert_array_equal(
                fast.read_region((x, y), 0, (bw, bh)), slow.read_region((x, y), 0, (bw, bh))
            )
        # Resampled reads from every level. A level with a fractional downsample (TCGA's
        # 2.0005) is read at whole pixels here but at a sub-pixel offset, interpolated, by
        # OpenSlide: a faint blur apart, never a shift.
        for target in (0.972, 2.0):
            a = fast.read_at_mpp((500, 400), (300, 300), target)
            b = slow.read_at_mpp((500, 400), (300, 300), target)
            diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
            assert diff.mean() < 1.0 and diff.max() <= 8
