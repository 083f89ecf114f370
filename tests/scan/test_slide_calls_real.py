"""Slide calls with the shipped weights on mosaic slides of real PatchCamelyon *valid* patches
(slides the model was neither trained nor calibrated on): all-normal slides are negative,
metastases are found with the right category and size, and slides unlike the training data are
not called positive without a warning.

Heatmap mosaics (``mosaic_slides.probability_mosaic``, in benchmarks/) give several seeds
cheaply; two mosaics also go through the whole scan pipeline as pyramidal TIFFs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mosaic_slides import (
    cell_mm,
    image_mosaic,
    lesion_layout,
    probability_mosaic,
    write_slide,
)
from shapely.geometry import shape
from torch.utils.data import DataLoader, Subset

from slidescan.engine.inference import Normalizer
from slidescan.engine.weights import LoadedModel
from slidescan.io.patches import open_patch_dataset
from slidescan.scan.scan_result import ScanOptions
from slidescan.scan.scanner import Scanner
from slidescan.scan.slide_call import SEED_CELLS, call_slide
from slidescan.train.calibration import dihedral_probs

pytestmark = pytest.mark.data

SIDE = 60  # cells: 3,600 tissue cells, 5.6 mm across
SEEDS = range(5)
PER_CLASS = 500


@pytest.fixture(scope="module")
def valid_patches(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of PCam valid patches, uint8 (n, 96, 96, 3), and labels."""
    data = open_patch_dataset(data_dir / "pcam-jpeg", split="valid")
    labels = np.asarray(data.labels)
    rng = np.random.default_rng(7)
    pick = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False) for c in (0, 1)]
        )
    )
    loader = DataLoader(Subset(data, pick.tolist()), batch_size=250, num_workers=2)
    images = torch.cat([x for x, _ in loader]).permute(0, 2, 3, 1).numpy()
    return images, labels[pick]


@pytest.fixture(scope="module")
def valid_probs(
    shipped: LoadedModel, valid_patches: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(8, n) probabilities of the normal and of the tumour patches under the 8 transforms."""
    images, labels = valid_patches
    ds = torch.utils.data.TensorDataset(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
    )
    normalizer = Normalizer(shipped.card, torch.device("cpu"))
    _, probs = dihedral_probs(shipped.model.cpu().eval(), ds, normalizer)
    return probs[:, labels == 0], probs[:, labels == 1]


def _call(shipped: LoadedModel, grid: np.ndarray):
    card = shipped.card
    assert card.seed_threshold is not None, "the shipped model must be calibrated"
    assert card.extent_threshold is not None
    seed, extent = card.lesion_thresholds()
    return call_slide(
        grid, seed_threshold=seed, extent_threshold=extent, cell_mm=cell_mm(card.mpp),
        seed_cells=SEED_CELLS,
    )  # fmt: skip


@pytest.mark.parametrize("seed", SEEDS)
def test_all_normal_mosaics_are_negative(
    shipped: LoadedModel, valid_probs: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    layout = lesion_layout(SIDE, 0.0, rng)
    call = _call(shipped, probability_mosaic(layout.truth, *valid_probs, rng))
    assert not call.positive, call.lesions[:3]
    assert call.tissue_tiles == SIDE * SIDE


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("diameter", [2.2, 0.65])
def test_metastases_are_found_with_their_category_and_size(
    shipped: LoadedModel, valid_probs: tuple[np.ndarray, np.ndarray], seed: int, diameter: float
) -> None:
    rng = np.random.default_rng(100 + seed)
    layout = lesion_layout(SIDE, diameter, rng)
    call = _call(shipped, probability_mosaic(layout.truth, *valid_probs, rng))
    assert call.positive
    expected = "macrometastasis" if diameter > 2 else "micrometastasis"
    assert call.category == expected, call.largest_diameter_mm
    largest = call.lesions[0]
    # Measured within three cells of the truth (cells quantise the outline, and a normal
    # neighbour above the extent threshold joins the lesion), centred on the disc.
    assert abs(largest.diameter_mm - diameter) <= 3 * cell_mm()
    assert layout.centre is not None
    assert np.hypot(largest.row - layout.centre[0], largest.col - layout.centre[1]) < 2.5


@pytest.fixture(scope="module")
def scanned(
    shipped: LoadedModel,
    valid_patches: tuple[np.ndarray, np.ndarray],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """A 50×50-cell all-normal and a 2.2 mm macrometastasis mosaic through the whole pipeline."""
    images, labels = valid_patches
    normal, tumour = images[labels == 0], images[labels == 1]
    d = tmp_path_factory.mktemp("mosaics")
    scanner = Scanner(shipped, ScanOptions(workers=0, device="cpu", progress=False))
    out = {}
    for name, diameter in (("normal", 0.0), ("macro", 2.2)):
        rng = np.random.default_rng(11)
        layout = lesion_layout(50, diameter, rng)
        slide = write_slide(d / f"{name}.tif", image_mosaic(layout.truth, normal, tumour, rng))
        out[name] = (layout, scanner.scan(slide, d / f"{name}.zarr"))
    return out


def test_scanned_normal_mosaic_is_negative_and_in_distribution(scanned: dict) -> None:
    _, result = scanned["normal"]
    # Fat and empty patches of PCam fall outside the tissue mask.
    assert 0.5 * 50 * 50 < result.tiles == result.call.tissue_tiles <= 50 * 50
    assert not result.call.positive and result.call.category in ("negative", "itc")
    assert not result.distribution.flagged, result.distribution
    assert result.distribution.tiles_checked == 256


def test_scanned_macrometastasis_is_found_in_place(scanned: dict) -> None:
    layout, result = scanned["macro"]
    call = result.call
    assert call.positive and call.category == "macrometastasis"
    assert not result.distribution.flagged
    from slidescan.io.outputs import geojson_path, read_report

    lesion = read_report(result.heatmap)["call"]["lesions"][0]
    cy, cx = layout.centre
    # The truth centre in level-0 pixels: cell (r, c) is the patch at (96c, 96r), 0.972 µm/px.
    truth_xy = np.array([96 * cx + 48, 96 * cy + 48])
    assert np.hypot(*(np.array(lesion["centroid_level0"]) - truth_xy)) < 2.5 * 96
    assert lesion["category"] == "macrometastasis"
    # The QuPath polygon of that lesion lies where the report says, with the same area.
    feature = json.loads(geojson_path(result.heatmap).read_text())["features"][0]
    polygon = shape(feature["geometry"])
    assert (
        polygon.is_valid and np.hypot(*(np.array(polygon.centroid.coords[0]) - truth_xy)) < 2.5 * 96
    )
    area_um2 = feature["properties"]["measurements"]["Lesion area µm^2"]
    assert area_um2 == pytest.approx(lesion["area_mm2"] * 1e6, rel=0.01)


def test_skin_slide_is_not_an_unqualified_positive(
    shipped: LoadedModel, data_dir: Path, tmp_path: Path
) -> None:
    # CMU-1-Small-Region is skin: lymph-node metastasis is not a question for it.
    scanner = Scanner(shipped, ScanOptions(workers=0, device="cpu", progress=False))
    result = scanner.scan(data_dir / "wsi" / "CMU-1-Small-Region.svs", tmp_path / "cmu.zarr")
    assert not result.call.positive or result.distribution.flagged, (
        result.call.category,
        result.distribution,
    )
