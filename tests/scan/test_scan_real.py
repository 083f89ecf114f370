"""Whole-slide scans of real data with the shipped weights, and an end-to-end ground-truth check.

The ground truth comes from mosaics of labelled PatchCamelyon validation patches written as a TIFF
at exactly the model's 0.972 µm/px: heatmap cell (r, c) must be mosaic patch (r, c), cells of the
tumour block must rank above the rest, and the slide calls must come out right.

``SLIDESCAN_TEST_WEIGHTS=path.pt`` runs these tests against another weights file (the ``shipped``
fixture of conftest.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from slide_fixtures import write_pyramid

from slidescan.engine.inference import make_predictor, predict_probs
from slidescan.engine.weights import LoadedModel
from slidescan.errors import SlidescanError
from slidescan.io.heatmap import read_heatmap
from slidescan.io.outputs import is_complete
from slidescan.scan.scan_result import ScanOptions, ScanResult
from slidescan.scan.scanner import Scanner
from slidescan.scan.tiling import TileGrid
from slidescan.train.metrics import roc_auc

pytestmark = pytest.mark.data

PATCH = 96
MOSAIC = 10  # cells a side
TUMOUR_BLOCK = 4  # a 4×4 block of tumour patches
SEED = 0


def scan(loaded: LoadedModel, slide: Path, out: Path, **options: Any) -> ScanResult:
    opts = {"workers": 0, "device": "cpu", "progress": False, **options}
    return Scanner(loaded, ScanOptions(**opts)).scan(slide, out)


def expected_shape(dimensions: list[int], slide_mpp: float, model_mpp: float) -> tuple[int, int]:
    width, height = dimensions
    scale = model_mpp / slide_mpp
    # Partial edge cells included: the strip narrower than a patch is scanned too.
    return (math.ceil(height / scale / PATCH), math.ceil(width / scale / PATCH))


# --- real slides -------------------------------------------------------------------------------


def test_scan_cmu_small_region(data_dir: Path, shipped: LoadedModel, tmp_path: Path) -> None:
    result = scan(shipped, data_dir / "wsi" / "CMU-1-Small-Region.svs", tmp_path / "cmu.zarr")
    assert is_complete(result.heatmap)
    probability, tissue, attrs = read_heatmap(result.heatmap)
    assert attrs["slide_mpp"] == pytest.approx(0.499, abs=0.001)  # from the SVS metadata
    assert attrs["slide_dimensions"] == [2220, 2967]
    assert probability.shape == expected_shape(
        attrs["slide_dimensions"], attrs["slide_mpp"], shipped.card.mpp
    )
    assert result.tiles > 0 and result.tiles == int(tissue.sum())
    assert np.isfinite(probability[tissue]).all()
    assert ((probability[tissue] >= 0) & (probability[tissue] <= 1)).all()
    assert np.isnan(probability[~tissue]).all()


def test_scan_slide_without_mpp(data_dir: Path, shipped: LoadedModel, tmp_path: Path) -> None:
    slide = data_dir / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(SlidescanError, match="default_mpp"):
        scan(shipped, slide, out_dir / "tcga.zarr")
    assert list(out_dir.iterdir()) == []

    result = scan(shipped, slide, out_dir / "tcga.zarr", mpp=0.5)
    probability, tissue, attrs = read_heatmap(result.heatmap)
    assert attrs["slide_mpp"] == 0.5
    assert probability.shape == expected_shape(attrs["slide_dimensions"], 0.5, shipped.card.mpp)
    assert result.tiles > 0 and np.isfinite(probability[tissue]).all()
    assert sorted(p.name for p in out_dir.iterdir()) == ["tcga.geojson", "tcga.json", "tcga.zarr"]


# --- end to end with ground truth: mosaics of labelled patches ---------------------------------


def _patch_files(data_dir: Path, label: int) -> list[Path]:
    folder = data_dir / "pcam-jpeg" / "valid" / str(label)
    return sorted(folder.glob("*.jpg"))


def _load(paths: list[Path]) -> np.ndarray:
    patches = []
    for p in paths:
        with Image.open(p) as im:
            patches.append(np.asarray(im.convert("RGB")))
    return np.stack(patches)


def make_mosaic(
    data_dir: Path, out: Path, *, tumour: bool, seed: int = SEED
) -> tuple[Path, np.ndarray, np.ndarray]:
    """(slide, truth, patches): a MOSAIC×MOSAIC grid of PCam patches at exactly 0.972 µm/px.

    ``truth`` marks the cells of the tumour block (all False for ``tumour=False``); ``patches``
    is (rows, cols, 96, 96, 3) as placed.
    """
    rng = np.random.default_rng(seed)
    normal = _patch_files(data_dir, 0)
    positive = _patch_files(data_dir, 1)
    chosen = [normal[i] for i in rng.choice(len(normal), MOSAIC * MOSAIC, replace=False)]
    truth = np.zeros((MOSAIC, MOSAIC), bool)
    if tumour:
        r0, c0 = rng.integers(0, MOSAIC - TUMOUR_BLOCK + 1, size=2)
        truth[r0 : r0 + TUMOUR_BLOCK, c0 : c0 + TUMOUR_BLOCK] = True
        picks = rng.choice(len(positive), TUMOUR_BLOCK * TUMOUR_BLOCK, replace=False)
        for k, flat in enumerate(np.flatnonzero(truth)):
            chosen[flat] = positive[picks[k]]
    patches = _load(chosen).reshape(MOSAIC, MOSAIC, PATCH, PATCH, 3)
    image = patches.transpose(0, 2, 1, 3, 4).reshape(MOSAIC * PATCH, MOSAIC * PATCH, 3)
    # One level with resolution tags giving 0.972 µm/px: patches are read without resampling.
    write_pyramid(out, np.ascontiguousarray(image), mpp=0.972, levels=1)
    return out, truth, patches


def direct_probs(loaded: LoadedModel, patches: np.ndarray) -> np.ndarray:
    """The model's probability for each mosaic patch, without any slide machinery (same
    engine as the scan's default, so equal numbers mean the cells line up)."""
    predictor = make_predictor(loaded, "cpu")
    batch = torch.from_numpy(patches.reshape(-1, PATCH, PATCH, 3)).permute(0, 3, 1, 2)
    probs = predict_probs(predictor.model, batch.contiguous(), predictor.normalizer)
    return probs.numpy().reshape(MOSAIC, MOSAIC)


@pytest.fixture(scope="module")
def tumour_scan(
    data_dir: Path, shipped: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ScanResult, np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("mosaic")
    slide, truth, patches = make_mosaic(data_dir, d / "tumour.tif", tumour=True)
    result = scan(shipped, slide, d / "tumour.zarr", stride=PATCH, min_tissue=0.0)
    return result, truth, patches


def test_mosaic_cells_align_with_patches(
    tumour_scan: tuple[ScanResult, np.ndarray, np.ndarray], shipped: LoadedModel
) -> None:
    result, truth, patches = tumour_scan
    probability, tissue, attrs = read_heatmap(result.heatmap)
    assert shipped.card.mpp == pytest.approx(0.972) and shipped.card.input_size == PATCH
    assert attrs["slide_mpp"] == pytest.approx(0.972, rel=1e-6)
    assert attrs["level"] == 0 and attrs["downsample"] == 1.0
    grid = TileGrid.from_attrs(attrs["grid"])
    assert grid.shape == probability.shape == (MOSAIC, MOSAIC)
    assert tissue.all() and result.tiles == MOSAIC * MOSAIC  # min_tissue 0: every cell
    for r, c in [(0, 0), (3, 7), (9, 9)]:
        assert grid.cell_to_level0(r, c) == (PATCH * c, PATCH * r)
    # Cell (r, c) scored exactly mosaic patch (r, c).
    np.testing.assert_allclose(probability, direct_probs(shipped, patches), atol=1e-4)


def test_mosaic_finds_the_tumour_block(
    tumour_scan: tuple[ScanResult, np.ndarray, np.ndarray],
) -> None:
    result, truth, _ = tumour_scan
    probability, _, _ = read_heatmap(result.heatmap)
    auc = roc_auc(truth.ravel().astype(int), probability.ravel())
    assert auc >= 0.85, f"cell AUC {auc:.3f} (tumour block vs the rest)"
    assert result.call.positive, result.call


def test_all_normal_mosaic_is_negative(
    data_dir: Path, shipped: LoadedModel, tmp_path: Path
) -> None:
    slide, truth, _ = make_mosaic(data_dir, tmp_path / "normal.tif", tumour=False)
    assert not truth.any()
    result = scan(shipped, slide, tmp_path / "normal.zarr", stride=PATCH, min_tissue=0.0)
    assert result.tiles == MOSAIC * MOSAIC
    assert not result.call.positive, result.call
