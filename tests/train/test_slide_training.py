"""Training from annotated slides: where patches are sampled, whole-slide hold-out, fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mosaic_slides import write_slide
from patch_fixtures import toy_patch
from scan_helpers import MODEL_MPP, invoke
from slide_fixtures import GLASS

from slidescan.engine.weights import ModelCard, file_sha256, load_weights
from slidescan.errors import SlidescanError
from slidescan.io.heatmap_format import PROBABILITY_KEY
from slidescan.io.slide import open_slide
from slidescan.train.data_split import balance_classes, split_holdout
from slidescan.train.slide_patches import (
    MARGIN_UM,
    LesionCells,
    SlideSample,
    open_annotated_slides,
    run_lesions,
    sample_slide,
)

CELLS = 14  # tissue cells a side, inside a one-cell glass border
TUMOUR = (5, 9)  # cell rows and columns [5, 9) of the canvas are tumour


def _mosaic(path: Path, seed: int, tumour: bool) -> Path:
    """A toy slide at the model's µm/px: glass border, toy tissue, a 4×4-cell tumour square."""
    rng = np.random.default_rng(seed)
    side = CELLS + 2
    image = np.empty((side * 96, side * 96, 3), np.uint8)
    image[:] = GLASS
    for r in range(1, side - 1):
        for c in range(1, side - 1):
            inside = tumour and TUMOUR[0] <= r < TUMOUR[1] and TUMOUR[0] <= c < TUMOUR[1]
            image[r * 96 : (r + 1) * 96, c * 96 : (c + 1) * 96] = toy_patch(int(inside), rng)
    return write_slide(path, image, mpp=MODEL_MPP)


def _geojson(path: Path, name: str = "Tumor") -> Path:
    lo, hi = TUMOUR[0] * 96, TUMOUR[1] * 96
    ring = [[lo, lo], [hi, lo], [hi, hi], [lo, hi], [lo, lo]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": {"classification": {"name": name}}}  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four slides (three with a tumour square outlined in QuPath GeoJSON, one all normal)."""
    root = tmp_path_factory.mktemp("lab")
    slides, notes = root / "slides", root / "annotations"
    slides.mkdir()
    notes.mkdir()
    for i in range(4):
        _mosaic(slides / f"s{i}.tif", seed=i, tumour=i < 3)
        if i < 3:
            _geojson(notes / f"s{i}.geojson")
    return slides, notes


def test_patches_follow_the_outline_and_keep_clear_of_it(lab: tuple[Path, Path]) -> None:
    slides, notes = lab
    card = ModelCard(model="pcamnet-s")
    with open_slide(slides / "s0.tif") as slide:
        sample = sample_slide(slide, card, notes / "s0.geojson", rng=np.random.default_rng(0))
    cells = sample.locations // 96  # the slide is at the model's scale: 96 px per cell
    tumour = {tuple(c) for c in cells[sample.labels == 1]}
    assert tumour == {(x, y) for x in range(*TUMOUR) for y in range(*TUMOUR)}
    # Every normal patch is at least the margin away from the outline...
    lo, hi = TUMOUR[0] * 96, TUMOUR[1] * 96
    normal = sample.locations[sample.labels == 0]
    gap_x = np.maximum(np.maximum(lo - (normal[:, 0] + 96), normal[:, 0] - hi), 0)
    gap_y = np.maximum(np.maximum(lo - (normal[:, 1] + 96), normal[:, 1] - hi), 0)
    assert (np.hypot(gap_x, gap_y) * MODEL_MPP >= MARGIN_UM).all()

    # ...and every tissue cell 3 cells or more from the square (gap ≥ 2 cells) is one.
    def far(v: int) -> bool:
        return v <= TUMOUR[0] - 3 or v >= TUMOUR[1] + 2

    far_cells = {(x, y) for x in range(1, CELLS + 1) for y in range(1, CELLS + 1)
                 if far(x) or far(y)}  # fmt: skip
    assert far_cells <= {tuple(c) for c in cells[sample.labels == 0]}
    assert not ({tuple(c) for c in cells} & {(0, 0), (CELLS + 1, CELLS + 1)})  # glass


def test_a_slide_without_annotations_is_all_normal(lab: tuple[Path, Path]) -> None:
    slides, notes = lab
    data = open_annotated_slides(slides, notes, ModelCard(model="pcamnet-s"))
    by_slide = {name: data.labels[data.groups == name] for name in np.unique(data.groups)}
    assert set(by_slide) == {"s0.tif", "s1.tif", "s2.tif", "s3.tif"}
    assert by_slide["s3.tif"].sum() == 0
    assert all(by_slide[f"s{i}.tif"].sum() == 16 for i in range(3))
    image, label = data[int(np.flatnonzero(data.labels == 1)[0])]
    assert image.shape == (3, 96, 96) and label == 1


def test_annotations_named_after_no_slide_are_an_error(
    lab: tuple[Path, Path], tmp_path: Path
) -> None:
    slides, _ = lab
    _geojson(tmp_path / "other.geojson")
    with pytest.raises(SlidescanError, match="no annotation file is named after a slide"):
        open_annotated_slides(slides, tmp_path, ModelCard(model="pcamnet-s"))


def _false_lesion(run: Path, weights: Path, slide: Path, rows: slice, cols: slice) -> Path:
    """Scan ``slide`` into ``run``, then give its heatmap one lesion of confident tiles."""
    import zarr

    heatmap = run / f"{slide.stem}.zarr"
    scanned = invoke("run", slide, "--out", heatmap, "--weights", weights, "--device", "cpu",
                     "--workers", "0")  # fmt: skip
    assert scanned.exit_code == 0, scanned.output
    group = zarr.open_group(str(heatmap), mode="r+")
    probability = np.zeros(group[PROBABILITY_KEY].shape, np.float32)
    probability[rows, cols] = 0.99
    group[PROBABILITY_KEY][...] = probability
    group.attrs.update(seed_threshold=0.9, extent_threshold=0.5)
    return heatmap


def _cells(sample: SlideSample, lesions: LesionCells, label: int) -> set[tuple[int, int]]:
    """(row, col) of the sample's patches of ``label`` on the run's grid."""
    middles = sample.locations[sample.labels == label] + 48  # the slide is at the model's scale
    return {(int(r), int(c)) for c, r in (middles - lesions.origin) // lesions.cell_px}


def test_hard_negatives_are_a_previous_runs_lesion_tiles(
    lab: tuple[Path, Path], weights: Path, tmp_path: Path
) -> None:
    """Issue 19: the tiles of a previous run's lesions away from the outlines come first among
    a slide's normal patches; tiles in or near the tumour never do."""
    slides, notes = lab
    run = tmp_path / "run"
    # The all-normal slide: a false lesion of 3×3 tiles.
    normal = run_lesions(_false_lesion(run, weights, slides / "s3.tif", slice(4, 7), slice(5, 8)))
    assert normal.mask.sum() == 9
    # An annotated slide (tumour in cells [5, 9)): a 9×9 lesion over the tumour and its margin,
    # of which only row and column 2 and the four corners lie clear of the outline grown by
    # 100 µm (the grown square has rounded corners).
    outlined = run_lesions(
        _false_lesion(run, weights, slides / "s0.tif", slice(2, 11), slice(2, 11))
    )
    clear = {(r, c) for r in range(2, 11) for c in range(2, 11) if r == 2 or c == 2}
    clear |= {(3, 3), (3, 10), (10, 3), (10, 10)}

    card = ModelCard(model="pcamnet-s")
    data = open_annotated_slides(slides, notes, card, max_per_class=21, hard_negatives=run)
    s0, s1, s2, s3 = data.samples
    block = {(r, c) for r in range(4, 7) for c in range(5, 8)}
    assert s3.path.name == "s3.tif" and s3.hard_negatives == 9 and block <= _cells(s3, normal, 0)
    assert s0.hard_negatives == len(clear) == 21 and _cells(s0, outlined, 0) == clear
    assert (s1.hard_negatives, s2.hard_negatives) == (0, 0)  # no result of theirs in the run
    assert "30 of them hard negatives" in data.description
    few = open_annotated_slides(slides, notes, card, max_per_class=9, hard_negatives=run)
    assert _cells(few.samples[3], normal, 0) == block
    plain = open_annotated_slides(slides, notes, card, max_per_class=9)
    assert plain.samples[3].hard_negatives == 0
    assert not normal.covers(*(plain.samples[3].locations + 48).T).all()

    with pytest.raises(SlidescanError, match="no heatmap of these slides"):
        open_annotated_slides(slides, notes, card, hard_negatives=tmp_path)
    refused = invoke("train", slides, "--hard-negatives", run)
    assert refused.exit_code == 1 and "--hard-negatives needs --slides" in refused.output


def test_hold_out_keeps_slides_whole_with_both_classes_on_each_side() -> None:
    groups = np.repeat([f"s{i}" for i in range(10)], 20)
    labels = np.zeros(200, int)
    labels[:20] = 1  # only s0 and s1 have tumour
    labels[20:25] = 1
    for seed in range(5):
        train, val = split_holdout(200, 0.2, seed, groups=groups, labels=labels)
        assert not set(groups[train]) & set(groups[val])
        assert set(labels[train]) == set(labels[val]) == {0, 1}


def test_balance_classes_repeats_the_rarer_class() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    index = balance_classes(np.arange(100), labels, seed=0)
    assert np.bincount(labels[index]).tolist() == [90, 90]
    assert set(np.arange(100)) <= set(index)


def test_fine_tune_from_slides(lab: tuple[Path, Path], weights: Path, tmp_path: Path) -> None:
    slides, notes = lab
    out = tmp_path / "tuned.pt"
    result = invoke(
        "train", "--slides", slides, "--annotations", notes, "--init", weights, "--out", out,
        "--epochs", "1", "--batch-size", "32", "--no-int8", "--device", "cpu", "--workers", "0",
        "--val-fraction", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tuned, start = load_weights(out), load_weights(weights)
    training = tuned.card.training
    assert training["init"]["sha256"] == file_sha256(weights)
    assert tuned.card.mean == start.card.mean and tuned.card.std == start.card.std
    held = training["holdout_slides"]
    assert held and set(held) < {"s0.tif", "s1.tif", "s2.tif", "s3.tif"}
    assert {i.split("@")[0] for i in training["holdout_ids"]} == set(held)
    assert tuned.card.stain_reference.keys() == {"macenko", "reinhard"}
    assert tuned.card.seed_threshold is not None, result.output  # calibrated on held-out slides


def test_train_needs_data_or_slides() -> None:
    result = invoke("train")
    assert result.exit_code == 1
    assert "give patch DATA, --slides DIR, or both" in result.output
