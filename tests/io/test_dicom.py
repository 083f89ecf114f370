"""DICOM whole-slide images (issue 23, item 13): a folder of .dcm files is one slide, named after
the folder, in single and batch runs. The test slide is converted by wsidicomizer (through
OpenSlide, so no JPEG library beyond the wheels is needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scan_helpers import CELL_UM, FAST, SLIDE_MPP, invoke
from slide_fixtures import square_image, write_pyramid

from slidescan.batch.directory import find_slides
from slidescan.io.outputs import is_complete, read_report
from slidescan.io.slide import open_slide, slide_bytes


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the source TIFF, a DICOM WSI folder converted from it)."""
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    d = tmp_path_factory.mktemp("dicom")
    rgb = square_image(SLIDE_MPP, 4 * CELL_UM, 2 * CELL_UM, (CELL_UM, CELL_UM))
    tif = write_pyramid(d / "source.tif", rgb, mpp=SLIDE_MPP)
    folder = d / "case-7" / "node-dicom"
    folder.mkdir(parents=True)
    WsiDicomizer.convert(
        tif, folder, include_label=False, include_overview=False, include_thumbnail=False,
        workers=1, preferred_source=SourceIdentifier.OPENSLIDE,
    )  # fmt: skip
    assert len(list(folder.glob("*.dcm"))) >= 2, "a series of several instances"
    return tif, folder


def test_a_dicom_folder_opens_as_one_slide(dicom_slide: tuple[Path, Path]) -> None:
    tif, folder = dicom_slide
    with open_slide(tif) as source, open_slide(folder) as slide:
        assert slide.path == folder and slide.reader == "openslide"
        assert slide.dimensions == source.dimensions
        assert slide.mpp == pytest.approx(SLIDE_MPP, rel=1e-3)
        at = (round(CELL_UM / SLIDE_MPP), round(CELL_UM / SLIDE_MPP))  # the purple square
        region = slide.read_at_mpp(at, (64, 64), SLIDE_MPP).astype(int)
        expected = source.read_at_mpp(at, (64, 64), SLIDE_MPP).astype(int)
        assert region.mean() < 200 and np.abs(region - expected).mean() < 8
    assert slide_bytes(folder) == sum(p.stat().st_size for p in folder.glob("*.dcm"))
    assert find_slides(folder) == [folder]
    assert find_slides(folder.parent) == [folder], "a DICOM sub-folder is a slide, not its files"


def test_dicom_folder_in_single_and_batch_runs(
    dicom_slide: tuple[Path, Path], weights: Path, tmp_path: Path
) -> None:
    tif, folder = dicom_slide
    one = tmp_path / "one.zarr"
    result = invoke("run", folder, "--out", one, "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("node-dicom: ") and is_complete(one)
    assert read_report(one)["slide"] == "node-dicom"

    batch = tmp_path / "batch"
    result = invoke("run", folder, "--out", batch, "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    assert "1/1 slides done" in result.stdout
    assert sorted(p.name for p in batch.iterdir() if p.suffix == ".zarr") == ["node-dicom.zarr"]

    cases = tmp_path / "cases"
    result = invoke("run", folder.parent.parent, "--out", cases, "--recursive", "--weights",
                    weights, *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert is_complete(cases / "case-7" / "node-dicom.zarr")
    with open(cases / "summary.csv") as fh:
        assert "case-7/node-dicom," in fh.read()
