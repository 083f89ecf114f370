"""Training patches sampled from whole slides and their tumour annotations.

A lab's own data is slides outlined in QuPath (or Camelyon16's ASAP XML), not patch folders. The
patches follow PatchCamelyon's rule at the model's µm/px: *tumour* when the central 32×32 square
(a third of the patch side) lies inside the tumour outline, *normal* when the patch's tissue lies
wholly outside the outline grown by ``margin_um`` (cells just outside a drawn line are often
tumour). Candidates sit on the scanner's grid (origin 0, stride = patch size), so the patches
trained on are the ones a scan reads; a slide without an annotation file is all normal.

Locations are chosen once (the tissue mask of each slide's thumbnail, as a scan computes it);
pixels are read in the DataLoader's workers, each opening its slides once, nothing extracted to
disk. The trainer holds out whole slides and balances the classes (``data_split.hold_out``).

*Hard negatives*: given a finished run over the same slides, the tiles of its lesions that lie
away from the tumour outlines (every lesion tile of a slide without annotations) are the model's
own false positives; they are taken first among each slide's normal patches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch

from slidescan.batch.directory import find_slides
from slidescan.engine.stain_norm import (
    FIT_PATCHES,
    StainMap,
    normalise_patches,
    sample_patches,
    stain_map,
)
from slidescan.engine.weights import ModelCard
from slidescan.errors import SlidescanError
from slidescan.io.annotations import DEFAULT_TUMOUR_CLASSES, find_annotation, read_annotations
from slidescan.io.heatmap import read_heatmap
from slidescan.io.outputs import SlideOutputs, is_complete
from slidescan.io.patches.dataset import ConcatPatchDataset, PatchDataset, to_chw
from slidescan.io.slide import Slide, open_slide
from slidescan.progress import progress
from slidescan.scan.call_outputs import make_call
from slidescan.scan.slide_geometry import SlideGeometry, plan_grid

MARGIN_UM = 100.0  # normal patches keep this far from a tumour outline
CENTRE_FRACTION = 1 / 3  # PatchCamelyon: the label is the central 32×32 of 96×96
MIN_TISSUE = 0.5  # share of a candidate's area that must be tissue (a scan takes 0.25)


@dataclass(frozen=True)
class SlideSample:
    """One slide's training patches: level-0 top-left ``(x, y)`` of each and its label."""

    path: Path
    mpp: float
    locations: np.ndarray  # (n, 2) int64
    labels: np.ndarray  # (n,) int64
    annotated: bool
    hard_negatives: int = 0  # normal patches taken from a previous run's lesions


@dataclass(frozen=True)
class LesionCells:
    """The cells of a finished run's lesions on one slide, where the scan's grid lies."""

    mask: np.ndarray  # (rows, cols) bool
    origin: tuple[float, float]  # level-0 top-left of cell (0, 0)
    cell_px: float  # a cell's side in level-0 pixels

    def covers(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether each level-0 point lies in a lesion cell."""
        c = np.floor((np.asarray(x) - self.origin[0]) / self.cell_px).astype(np.int64)
        r = np.floor((np.asarray(y) - self.origin[1]) / self.cell_px).astype(np.int64)
        rows, cols = self.mask.shape
        inside = (r >= 0) & (c >= 0) & (r < rows) & (c < cols)
        out = np.zeros(inside.shape, bool)
        out[inside] = self.mask[r[inside], c[inside]]
        return out


def run_lesions(heatmap: Path) -> LesionCells:
    """The lesion cells of a finished scan's heatmap, at the thresholds its call used."""
    return _lesion_cells(*read_heatmap(heatmap)[::2])


def _lesion_cells(probability: np.ndarray, attrs: dict[str, Any]) -> LesionCells:
    geometry = SlideGeometry.from_attrs(attrs)
    call = make_call(
        probability, geometry, float(attrs["seed_threshold"]), float(attrs["extent_threshold"])
    )
    return LesionCells(call.lesion_labels > 0, geometry.cell_origin_level0, geometry.cell_level0_px)


def sample_slide(
    slide: Slide,
    card: ModelCard,
    annotation: Path | None,
    *,
    tumour_classes: tuple[str, ...] = DEFAULT_TUMOUR_CLASSES,
    max_per_class: int = 2000,
    margin_um: float = MARGIN_UM,
    lesions: LesionCells | None = None,
    rng: np.random.Generator,
) -> SlideSample:
    """Tumour and normal patch locations of one slide on the scanner's grid (see module doc);
    normal patches in ``lesions`` (a previous run's) come first."""
    grid, tissue = plan_grid(slide, card, None, MIN_TISSUE)
    rows, cols = np.nonzero(tissue)
    step = grid.stride * grid.scale
    side = card.input_size * grid.scale
    x0 = grid.origin[0] + cols * step
    y0 = grid.origin[1] + rows * step
    labels = np.zeros(len(rows), np.int64)
    keep = np.ones(len(rows), bool)
    if annotation is not None:
        notes = read_annotations(annotation, tumour_classes)
        shift = slide.bounds_origin if notes.bounds_relative else (0, 0)
        tumour = shapely.affinity.translate(notes.tumour, shift[0], shift[1])
        if not tumour.is_empty:
            centre = side * CENTRE_FRACTION
            c0 = side / 2 - centre / 2
            centres = shapely.box(x0 + c0, y0 + c0, x0 + c0 + centre, y0 + c0 + centre)
            patches = shapely.box(x0, y0, x0 + side, y0 + side)
            grown = tumour.buffer(margin_um / slide.mpp)
            shapely.prepare(tumour)
            shapely.prepare(grown)
            labels[shapely.contains(tumour, centres)] = 1
            # Neither clearly tumour nor clearly away from it: left out, not guessed.
            keep = (labels == 1) | ~shapely.intersects(grown, patches)
    normal = keep & (labels == 0)
    middles = (x0 + side / 2, y0 + side / 2)
    hard = normal & lesions.covers(*middles) if lesions is not None else np.zeros_like(normal)
    first = _at_most(np.flatnonzero(hard), max_per_class, rng)
    rest = _at_most(np.flatnonzero(normal & ~hard), max_per_class - len(first), rng)
    positive = _at_most(np.flatnonzero(keep & (labels == 1)), max_per_class, rng)
    index = np.sort(np.concatenate([first, rest, positive]))
    locations = np.stack([np.round(x0[index]), np.round(y0[index])], axis=1).astype(np.int64)
    return SlideSample(
        slide.path, slide.mpp, locations, labels[index], annotation is not None, len(first)
    )


def _at_most(index: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return index if len(index) <= n else rng.choice(index, size=n, replace=False)


class SlidePatchDataset(PatchDataset):
    """Patches of several slides read on demand; ``groups`` names each patch's slide."""

    def __init__(
        self,
        samples: Sequence[SlideSample],
        *,
        target_mpp: float,
        size: int,
        stains: Sequence[StainMap | None] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.stains = list(stains) if stains is not None else [None] * len(self.samples)
        self.target_mpp = target_mpp
        self.size = size
        order = [(s, j) for s, sample in enumerate(self.samples) for j in range(len(sample.labels))]
        self._items = np.asarray(order, dtype=np.int64).reshape(-1, 2)
        labels = np.array([self.samples[s].labels[j] for s, j in self._items], np.int64)
        ids = [f"{self.samples[s].path.name}@{x},{y}" for s, j in self._items
               for x, y in [self.samples[s].locations[j]]]  # fmt: skip
        n_slides = len(self.samples)
        n_tumour = int(labels.sum())
        n_hard = sum(sample.hard_negatives for sample in self.samples)
        hard = f", {n_hard} of them hard negatives" * bool(n_hard)
        super().__init__(
            ids, labels,
            f"{n_slides} slide{'s' * (n_slides != 1)} ({n_tumour} tumour, "
            f"{len(labels) - n_tumour} normal patches{hard})",
        )  # fmt: skip
        self.groups = np.array([self.samples[s].path.name for s, _ in self._items])
        self._open: dict[int, Slide] = {}
        self._pid = os.getpid()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s, j = self._items[self._index(i)]
        sample = self.samples[int(s)]
        patch = self._read(int(s), int(j))
        stain = self.stains[int(s)]
        return to_chw(patch if stain is None else stain(patch)), int(sample.labels[j])

    def _read(self, s: int, j: int) -> np.ndarray:
        if self._pid != os.getpid():  # handles inherited through fork are the parent's
            self._open, self._pid = {}, os.getpid()
        slide = self._open.get(s)
        if slide is None:
            slide = self._open[s] = open_slide(self.samples[s].path, mpp=self.samples[s].mpp)
        x, y = self.samples[s].locations[j]
        return slide.read_at_mpp((int(x), int(y)), (self.size, self.size), self.target_mpp)

    def with_stain(self, method: str, reference: dict[str, Any], seed: int) -> SlidePatchDataset:
        """The same patches, each slide's mapped onto ``reference`` by a map fitted on a sample
        of that slide's patches."""
        stains = [
            stain_map(method, sample_patches(partial(self._read, s), len(sample.labels),
                                             FIT_PATCHES, seed), reference)
            for s, sample in enumerate(self.samples)
        ]  # fmt: skip
        return SlidePatchDataset(
            self.samples, target_mpp=self.target_mpp, size=self.size, stains=stains
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = {}  # each worker opens its own handles
        return state


def normalised(
    data: PatchDataset, method: str, reference: dict[str, Any], seed: int
) -> PatchDataset:
    """``data`` with stain normalisation ``method``: one map per slide of slide data, one per
    patch collection otherwise."""
    if method == "none":
        return data
    if isinstance(data, ConcatPatchDataset):
        return ConcatPatchDataset([normalised(p, method, reference, seed) for p in data.parts])
    if isinstance(data, SlidePatchDataset):
        return data.with_stain(method, reference, seed)
    return normalise_patches(data, method, reference, seed)


def open_annotated_slides(
    slide_folder: Path,
    annotation_folder: Path | None,
    card: ModelCard,
    *,
    tumour_classes: tuple[str, ...] = DEFAULT_TUMOUR_CLASSES,
    max_per_class: int = 2000,
    mpp: float | None = None,
    hard_negatives: Path | None = None,
    seed: int = 0,
) -> SlidePatchDataset:
    """Sample every slide of ``slide_folder`` (annotations by slide name from ``annotation_folder``;
    a slide without one is all normal) at ``card``'s µm/px and patch size; ``hard_negatives``: a
    finished run's output folder over these slides, whose lesion tiles away from the outlines
    are taken first among the normal patches."""
    rng = np.random.default_rng(seed)
    samples = []
    slides = find_slides(slide_folder)
    if not slides:
        raise SlidescanError(f"{slide_folder}: no slides in this folder")
    runs = _previous_lesions(slides, hard_negatives) if hard_negatives is not None else {}
    for path in progress(slides, desc="sample slides", unit="slide", leave=False):
        note = find_annotation(annotation_folder, path.name) if annotation_folder else None
        with open_slide(path, mpp=mpp) as slide:
            samples.append(
                sample_slide(
                    slide,
                    card,
                    note,
                    tumour_classes=tumour_classes,
                    max_per_class=max_per_class,
                    lesions=runs.get(path),
                    rng=rng,
                )  # fmt: skip
            )
    if annotation_folder is not None and not any(s.annotated for s in samples):
        raise SlidescanError(
            f"{annotation_folder}: no annotation file is named after a slide of {slide_folder} "
            "(expected <slide stem>.geojson, .json or .xml)"
        )
    return SlidePatchDataset(samples, target_mpp=card.mpp, size=card.input_size)


def _previous_lesions(slides: Sequence[Path], run: Path) -> dict[Path, LesionCells]:
    """The lesion cells of each of ``slides`` that the run folder ``run`` holds a heatmap of
    (``<stem>.zarr``, made from a slide of the same name)."""
    if not run.is_dir():
        raise SlidescanError(f"{run}: no such run folder", param="hard_negatives")
    found = {}
    for path in slides:
        heatmap = SlideOutputs.in_folder(path, run).heatmap
        if is_complete(heatmap):
            probability, _, attrs = read_heatmap(heatmap)
            if Path(str(attrs.get("slide_path", ""))).name == path.name:
                found[path] = _lesion_cells(probability, attrs)
    if not found:
        raise SlidescanError(
            f"{run}: no heatmap of these slides (expected <slide stem>.zarr from `slidescan run`)",
            param="hard_negatives",
        )
    return found
