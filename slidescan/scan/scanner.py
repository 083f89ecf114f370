"""Scan one slide: reader → tissue mask → tile grid → DataLoader → model → zarr heatmap → call.

Outputs go through :mod:`slidescan.io.outputs`: written under this run's own temporary names while
the slide's lock is held, then renamed into place, the JSON report last. An interrupted scan never
leaves anything that looks finished, and every report carries the fingerprint of its settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from slidescan.about import RESEARCH_USE_NOTICE, __version__
from slidescan.engine.cell_scoring import CellScorer
from slidescan.engine.device import default_scan_batch, default_scan_workers
from slidescan.engine.inference import Normalizer, make_predictor
from slidescan.engine.stain_norm import (
    FIT_PATCHES,
    StainMap,
    check_reference,
    sample_patches,
    stain_map,
)
from slidescan.engine.weights import LoadedModel, ModelCard
from slidescan.errors import SlidescanError, one_line
from slidescan.io.heatmap import HeatmapWriter
from slidescan.io.outputs import SlideOutputs, Staging, fingerprint
from slidescan.io.slide import Slide, open_slide
from slidescan.report.lesion_geojson import lesion_feature_collection
from slidescan.report.slide_report import (
    NO_TISSUE_WARNING,
    CallReport,
    DistributionReport,
    LesionReport,
    SlideReport,
)
from slidescan.scan.distribution_check import (
    DistributionCheck,
    FeatureReference,
    check_features,
    check_scale,
    combine,
    feature_batches,
    supports_features,
)
from slidescan.scan.runner import TileRunner, choose_runner
from slidescan.scan.slide_call import SlideCall, call_slide, seed_cells_for
from slidescan.scan.slide_tiles import SlideTileDataset
from slidescan.scan.tiling import TileGrid, make_grid, tissue_fraction
from slidescan.scan.tissue import TISSUE_MASK_VERSION, mask_size_limits, tissue_mask
from slidescan.vocabulary import CATEGORY_NAMES


@dataclass(frozen=True)
class ScanOptions:
    """How to scan; defaults are what a first-time user should get."""

    mpp: float | None = None
    stride: int | None = None
    min_tissue: float = 0.25
    batch_size: int | None = None  # None: default_scan_batch(device)
    workers: int | None = None  # None: default_scan_workers(device)
    device: str = "auto"
    backend: str = "auto"
    tta: bool = False
    overwrite: bool = False
    threshold: float | None = None
    block: int | None = None
    dense: bool = False
    reader: str = "auto"
    runner: str = "auto"  # where the model runs: main process or DataLoader workers (scan.runner)
    full_paths: bool = False  # record the slide's absolute path (file names only by default)
    default_mpp: float | None = (
        None  # scale for slides whose metadata has none (--mpp overrides all)
    )
    progress: bool = True
    any_scale: bool = False  # scan even when a patch covers < MIN_PATCH_SLIDE_PX slide pixels
    # engine.stain_norm.STAIN_METHODS, fitted per slide on its tissue; None: the model's own
    stain_norm: str | None = None


@dataclass
class ScanResult:
    """What a scan produced and how it went."""

    slide: Path
    heatmap: Path
    report: Path
    call: SlideCall
    tiles: int
    seconds: float
    overlay: Path | None = None
    distribution: DistributionCheck = DistributionCheck(False)
    slide_report: SlideReport | None = None  # what X.json holds


def mask_thumbnail(slide: Slide, max_size: int = 2048) -> tuple[np.ndarray, float]:
    """Tissue mask of the slide's thumbnail and its downsample (level-0 px per mask px).

    The thumbnail is at most ``max_size`` px, but no larger than the first pyramid level that is
    at least half that size: reading that level whole is far cheaper than shrinking a level
    several times bigger, and half the resolution is plenty for a mask.
    """
    enough = [max(d) for d in slide.level_dimensions if max(d) >= max_size // 2]
    rgb, downsample = slide.thumbnail(min([max_size, *enough]))
    min_object_px, max_hole_px = mask_size_limits(slide.mpp * downsample)
    mask = tissue_mask(rgb, min_object_px=min_object_px, max_hole_px=max_hole_px)
    return mask, downsample


# A model patch must span at least this many slide pixels: below it, the scale is almost surely
# wrong (--mpp 50 for 0.50) and the grid explodes (2.7 million tiles on a 4,443-px slide).
MIN_PATCH_SLIDE_PX = 24


def check_grid_scale(slide: Slide, card: ModelCard) -> None:
    """Refuse, before any scanning, a scale at which a model patch covers a few slide pixels."""
    span = card.input_size * card.mpp / slide.mpp
    if span < MIN_PATCH_SLIDE_PX:
        raise SlidescanError(
            f"{slide.path.name}: at {slide.mpp:.3g} µm/px ({slide.mpp_source}) a "
            f"{card.input_size}-px patch at {card.mpp} µm/px covers only {span:.1f} slide pixels; "
            "the scale is probably wrong (check the µm/px given or the slide's metadata), or "
            "allow it with any_scale=True (slidescan run --any-scale)"
        )


def plan_grid(
    slide: Slide, card: ModelCard, stride: int | None, min_tissue: float
) -> tuple[TileGrid, np.ndarray]:
    """The tile grid at the model's resolution and which of its cells hold enough tissue."""
    mask, mask_ds = mask_thumbnail(slide)
    grid = make_grid(slide.dimensions, slide.mpp, card.mpp, card.input_size, stride)
    if grid.shape[0] < 1 or grid.shape[1] < 1:
        raise SlidescanError(
            f"{slide.path.name}: slide is smaller than one {card.input_size}-px patch "
            f"at {card.mpp} µm/px"
        )
    return grid, tissue_fraction(mask, mask_ds, grid) >= min_tissue


class Scanner:
    """A model on a device, ready to scan any number of slides."""

    def __init__(self, loaded: LoadedModel, options: ScanOptions) -> None:
        self.loaded = loaded
        self.options = options
        self.predictor = make_predictor(loaded, options.device, options.backend)
        self.device, self.model, self.engine = (
            self.predictor.device,
            self.predictor.model,
            self.predictor.engine,
        )
        self.workers = (
            default_scan_workers(self.device) if options.workers is None else options.workers
        )
        self.batch_size = options.batch_size or default_scan_batch(self.device)
        card = loaded.card
        # A lesion needs one tile at the seed threshold (calibrated on simulated normal slides)
        # and extends over neighbours at the tile threshold. --threshold replaces the seed.
        self.seed_threshold, self.extent_threshold = card.lesion_thresholds(options.threshold)
        self.stain_norm = options.stain_norm or card.stain_norm
        check_reference(self.stain_norm, card.stain_reference)
        self.stride = options.stride
        # Fully convolutional models (torch or exported) give the stride-32 map in one pass;
        # others get it from overlapping tiles (9× the work of stride 96).
        dense_stride = getattr(self.model, "dense_stride", None)
        self.dense = options.dense and dense_stride is not None
        if options.dense:
            stride = dense_stride or card.input_size // 3
            if options.stride not in (None, stride):
                raise SlidescanError(f"--dense scans at stride {stride}; drop --stride")
            self.stride = stride
        self.reference = (
            FeatureReference.from_tensors(loaded.feature_reference)
            if loaded.feature_reference is not None and supports_features(loaded.model)
            else None
        )
        # Dense regions amortise the receptive-field margin over more cells: bigger blocks.
        # 32 cells a side (1,088 px) keeps CPU memory small; a GPU wants more work per forward
        # pass, so it gets 64 (2,112 px, a few hundred MB of fp16 activations).
        dense_block = 64 if self.device.type == "cuda" else 32
        self.block = options.block or (dense_block if self.dense else 8)

    def settings(self) -> dict[str, Any]:
        """Everything besides the slide that changes a result (the fingerprint's input)."""
        card, opts = self.loaded.card, self.options
        return {
            "weights_sha256": self.loaded.sha256,
            "model": card.model,
            "engine": self.engine,
            "mpp_override": opts.mpp,
            "default_mpp": opts.default_mpp,
            "reader": opts.reader,
            "stride": self.stride or card.input_size,
            "dense": opts.dense,
            "tta": opts.tta,
            "min_tissue": opts.min_tissue,
            "tissue_mask": TISSUE_MASK_VERSION,
            "seed_threshold": self.seed_threshold,
            "extent_threshold": self.extent_threshold,
            "slidescan_version": __version__,
            # Only when on: results of earlier versions (which had none) stay valid.
            **({"stain_norm": self.stain_norm} if self.stain_norm != "none" else {}),
        }

    def fingerprint(self, slide_path: Path) -> str:
        """The fingerprint a scan of ``slide_path`` with these settings records."""
        size = slide_path.stat().st_size
        return fingerprint({**self.settings(), "slide": slide_path.name, "slide_bytes": size})

    def scan(self, slide_path: Path, out: Path, overlay: Path | None = None) -> ScanResult:
        """Scan ``slide_path`` into the zarr heatmap ``out`` (+ JSON report, optional overlay).

        An existing result is replaced only with ``--overwrite``; one left by an interrupted scan
        always is. Another run writing ``out`` raises ``OutputBusy``.
        """
        outputs = SlideOutputs(out, overlay)
        with outputs.locked():
            if not self.options.overwrite:
                if out.exists() and not outputs.interrupted():
                    raise SlidescanError(f"{out} already exists (use --overwrite to redo it)")
                if outputs.report.exists() and not out.exists():
                    raise SlidescanError(
                        f"{outputs.report} exists and would be replaced (use --overwrite)"
                    )
            return self.write(slide_path, outputs)

    def write(self, slide_path: Path, outputs: SlideOutputs) -> ScanResult:
        """Scan ``slide_path`` into ``outputs``, replacing what is there; the caller holds
        ``outputs.locked()``."""
        start = time.perf_counter()
        if outputs.overlay is not None:
            # matplotlib loads now, not after the scan: a Ctrl-C that lands inside an import
            # prints Python's "Exception ignored" traceback, and the end of a scan is where
            # users press it (tests/scan/test_interrupt.py saw it once at 1.5 s).
            import slidescan.report.overlay  # noqa: F401
        with outputs.staged() as staging:
            result = self._scan_into(slide_path, outputs, staging, start)
            staging.commit()
        return result

    def _scan_into(
        self, slide_path: Path, outputs: SlideOutputs, staging: Staging, start: float
    ) -> ScanResult:
        opts, card = self.options, self.loaded.card
        with open_slide(
            slide_path, mpp=opts.mpp, default_mpp=opts.default_mpp, reader=opts.reader
        ) as slide:
            if not opts.any_scale:
                check_grid_scale(slide, card)
            grid, tissue = plan_grid(slide, card, self.stride, opts.min_tissue)
            cells = np.argwhere(tissue)
            attrs = self._attrs(slide_path, slide, grid)
            stain = self._fit_stain(slide, grid, cells)
            if stain is not None:
                attrs["stain_norm"] = {"method": self.stain_norm, "fitted": stain.source.to_dict()}
            # Each worker would hold its own copy of a plain image: read it here instead.
            workers = 0 if slide.in_memory else self.workers
            used_mpp = slide.mpp  # workers reopen the slide: hand them the scale chosen here
            thumb = slide.thumbnail(1024) if outputs.overlay is not None else None
            scale_doubts = check_scale(slide.mpp, card.mpp)
        writer = HeatmapWriter(
            staging.heatmap, grid.shape, attrs=attrs, overwrite=True,
            slide_mpp=attrs["slide_mpp"], cell_origin_level0=attrs["cell_origin_level0"],
            cell_level0_px=attrs["cell_level0_px"],
        )  # fmt: skip
        writer.write_tissue(tissue)
        self._infer(slide_path, used_mpp, grid, cells, writer, workers, stain)
        probability = writer.probability
        call = call_slide(
            probability, seed_threshold=self.seed_threshold,
            extent_threshold=self.extent_threshold, cell_mm=_cell_mm(grid, card),
            seed_cells=seed_cells_for(grid.stride, grid.patch_size),
        )  # fmt: skip
        distribution = combine(
            self._check_distribution(slide_path, used_mpp, grid, cells, stain), scale_doubts
        )
        if len(cells) == 0:  # nothing was looked at: not a negative anyone may trust
            distribution = combine(distribution, (NO_TISSUE_WARNING,))
        seconds = time.perf_counter() - start
        report = SlideReport(
            slide=slide_path.name, heatmap=outputs.heatmap.name, geojson=outputs.geojson.name,
            call=_call_report(call, grid), distribution=_distribution_report(distribution),
            reliable=not distribution.flagged, tiles_scanned=len(cells),
            warnings=() if len(cells) else (NO_TISSUE_WARNING,), wall_seconds=round(seconds, 3),
            fingerprint=self.fingerprint(slide_path), settings=self.settings(), attributes=attrs,
        )  # fmt: skip
        writer.update_attrs(**report.summary())
        writer.close()
        report.write(staging.report)
        self._write_geojson(staging.geojson, call, attrs, report.fingerprint)
        if thumb is not None and staging.overlay is not None:
            self._overlay(
                thumb, probability, tissue, grid, slide_path, call, distribution, staging.overlay
            )
        return ScanResult(
            slide_path, outputs.heatmap, outputs.report, call, len(cells), seconds,
            outputs.overlay, distribution, report,
        )  # fmt: skip

    @staticmethod
    def _write_geojson(
        path: Path, call: SlideCall, attrs: dict[str, Any], fingerprint: str
    ) -> None:
        """The lesions as QuPath annotations (an empty collection when there are none)."""
        collection = lesion_feature_collection(
            call.lesion_labels, call.lesions, cell_origin_level0=attrs["cell_origin_level0"],
            cell_level0_px=attrs["cell_level0_px"],
            slide=Path(attrs["slide_path"]).name, slide_size=attrs["slide_dimensions"],
            image_offset=attrs["slide_bounds_origin_level0"], namespace=fingerprint,
        )  # fmt: skip
        path.write_text(json.dumps(collection) + "\n")

    def _fit_stain(self, slide: Slide, grid: TileGrid, cells: np.ndarray) -> StainMap | None:
        """The slide's colour map onto the model's reference, fitted on a seeded sample of its
        tissue tiles (None when stain normalisation is off or there is no tissue)."""
        method = self.stain_norm
        if method == "none" or len(cells) == 0:
            return None
        size = (grid.patch_size, grid.patch_size)
        tiles = sample_patches(
            lambda i: slide.read_at_mpp(grid.cell_to_level0(*cells[i]), size, grid.target_mpp),
            len(cells), FIT_PATCHES, seed=0,
        )  # fmt: skip
        try:
            return stain_map(method, tiles, self.loaded.card.stain_reference)
        except SlidescanError as exc:
            raise SlidescanError(f"{slide.path.name}: {exc}") from None

    def _check_distribution(
        self,
        slide_path: Path,
        mpp: float,
        grid: Any,
        cells: np.ndarray,
        stain: StainMap | None,
        sample: int = 256,
    ) -> DistributionCheck:
        """Embed a seeded random sample of tissue tiles and compare them with training."""
        if self.reference is None or len(cells) == 0:
            return DistributionCheck(False)
        pick = np.random.default_rng(0).permutation(len(cells))[:sample]
        dataset = SlideTileDataset(
            slide_path, grid, cells[np.sort(pick)], mpp=mpp, block=1,
            reader=self.options.reader, stain=stain,
        )  # fmt: skip
        model = self.loaded.model
        normalizer = Normalizer(self.loaded.card, next(model.parameters()).device)
        try:
            # At most `sample` tiles (~7 MB): read them all, score them 64 at a time.
            tiles = torch.cat([dataset[i][0] for i in range(len(dataset))])
            features = feature_batches(model, tiles.split(64), normalizer)
        except Exception as exc:
            raise SlidescanError(
                f"{slide_path.name}: distribution check failed: {one_line(exc)}"
            ) from exc
        finally:
            dataset.close()
        return check_features(self.reference.distances(features), self.reference.patch_threshold)

    def _infer(
        self,
        slide_path: Path,
        mpp: float,
        grid: Any,
        cells: np.ndarray,
        writer: HeatmapWriter,
        workers: int,
        stain: StainMap | None,
    ) -> None:
        if len(cells) == 0:
            return
        opts = self.options
        dataset = SlideTileDataset(
            slide_path, grid, cells, mpp=mpp, block=self.block, dense=self.dense,
            reader=opts.reader, stain=stain,
        )  # fmt: skip
        runner = TileRunner(
            CellScorer(self.loaded, self.predictor, dense=self.dense, tta=opts.tta),
            where=choose_runner(opts.runner, workers, self.device), workers=workers,
            batch_size=self.batch_size, dense=self.dense, device=self.device,
        )  # fmt: skip
        bar = tqdm(
            total=len(cells), desc=slide_path.name, unit="tile", leave=False,
            disable=not opts.progress, dynamic_ncols=True,
        )  # fmt: skip
        try:
            for probs, scored in runner.run(dataset, slide_path.name):
                writer.write_cells(scored.numpy(), probs.numpy())
                bar.update(len(scored))
        finally:
            bar.close()
            dataset.close()
        writer.flush()

    def _attrs(self, slide_path: Path, slide: Any, grid: Any) -> dict[str, Any]:
        card = self.loaded.card
        level = slide.best_level_for_mpp(card.mpp)
        return {
            # File names often carry patient identifiers; whole paths reveal more (site, study).
            "slide_path": str(slide_path.resolve()) if self.options.full_paths else slide_path.name,
            "slide_dimensions": list(slide.dimensions),
            # OpenSlide's non-empty region (MIRAX and others): QuPath's image starts there.
            "slide_bounds_origin_level0": list(slide.bounds_origin),
            "slide_mpp": slide.mpp,
            "slide_mpp_source": slide.mpp_source,
            "slide_reader": slide.reader,
            "mpp": card.mpp,
            "level": level,
            "downsample": float(slide.level_downsamples[level]),
            "grid": grid.to_attrs(),
            "patch_size": grid.patch_size,
            "stride": grid.stride,
            "grid_origin_level0": list(grid.origin),
            # Level-0 top-left of the area cell (0, 0) stands for (the patch's central
            # stride×stride square), so cell (r, c) covers this + (c, r)·cell_level0_px.
            "cell_origin_level0": list(grid.cell_region_level0(0, 0)[:2]),
            "cell_level0_px": grid.stride * grid.scale,
            "min_tissue": self.options.min_tissue,
            "tta": self.options.tta,
            "dense": self.options.dense,
            "dense_method": (
                ("fully convolutional" if self.dense else "overlapping tiles")
                if self.options.dense
                else None
            ),
            "model": card.model,
            "weights_sha256": self.loaded.sha256,
            "engine": self.engine,
            "device": str(self.device),
            "seed_threshold": self.seed_threshold,
            "extent_threshold": self.extent_threshold,
            "slidescan_version": __version__,
            "notice": RESEARCH_USE_NOTICE,
        }

    def _overlay(
        self,
        thumb: tuple[np.ndarray, float],
        probability: np.ndarray,
        tissue: np.ndarray,
        grid: Any,
        slide_path: Path,
        call: SlideCall,
        distribution: DistributionCheck,
        overlay: Path,
    ) -> None:
        """The PNG: heatmap, scanned tissue and lesion outlines over the slide's thumbnail."""
        from slidescan.report.overlay import grid_extent_in_thumbnail, render_overlay

        image, downsample = thumb
        # A cell shows the central stride×stride square of its patch.
        origin = grid.cell_region_level0(0, 0)[:2]
        extent = grid_extent_in_thumbnail(
            probability.shape, grid.stride * grid.scale, downsample, origin
        )
        title = f"{slide_path.name}\n{verdict_text(call, distribution)}"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        render_overlay(
            image, probability, overlay, title=title, thumbnail_extent=extent, tissue=tissue,
            lesion_labels=call.lesion_labels, lesions=call.lesions,
            seed_threshold=call.seed_threshold,
            extent_threshold=call.extent_threshold,
        )  # fmt: skip


def _cell_mm(grid: TileGrid, card: ModelCard) -> float:
    """The grid's cell side in mm: its stride at the model's resolution."""
    return grid.stride * card.mpp / 1000.0


def verdict_text(call: SlideCall, distribution: DistributionCheck) -> str:
    """'POSITIVE (macrometastasis, 2.31 mm)', 'negative', …, marked when unreliable."""
    verdict = "POSITIVE" if call.positive else "negative"
    if call.category != "negative":
        verdict += f" ({CATEGORY_NAMES[call.category]}, {call.largest_diameter_mm:.2f} mm)"
    if distribution.flagged:
        verdict += " — UNRELIABLE: slide unlike the training data"
    return verdict


def describe(result: ScanResult) -> str:
    """One line per slide for the terminal."""
    c = result.call
    if result.tiles == 0:
        return f"{result.slide.name}: no tissue found, nothing scanned  [research use only]"
    line = (
        f"{result.slide.name}: {verdict_text(c, result.distribution)}  lesions {len(c.lesions)}  "
        f"tiles ≥ {c.extent_threshold:.2f}: {c.positive_tiles}/{result.tiles}  "
        f"{result.seconds:.1f} s  [research use only]"
    )
    if result.distribution.flagged:
        line += "\n  " + "; ".join(result.distribution.reasons)
    return line


def _call_report(call: SlideCall, grid: TileGrid) -> CallReport:
    """The call for the report, lesion centroids also in level-0 pixels."""
    values = call.to_dict()
    lesions = []
    for lesion in values.pop("lesions"):
        x, y = grid.cell_center_level0(lesion["row"], lesion["col"])
        lesions.append(
            LesionReport(**lesion, centroid_level0=(round(float(x), 1), round(float(y), 1)))
        )
    return CallReport(**values, lesions=tuple(lesions))


def _distribution_report(check: DistributionCheck) -> DistributionReport:
    return DistributionReport(**{**check.to_dict(), "reasons": tuple(check.reasons)})


def scan_slide(
    slide: str | Path,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    overlay: str | Path | None = None,
    **options: Any,
) -> ScanResult:
    """Scan one slide with the shipped (or given) weights: ``slidescan run`` from Python.

    ``options`` are :class:`ScanOptions` fields (``mpp=``, ``dense=``, ``overwrite=``, ...).
    """
    from slidescan.engine.weights import load_weights

    scanner = Scanner(load_weights(Path(weights) if weights else None), ScanOptions(**options))
    return scanner.scan(Path(slide), Path(out), Path(overlay) if overlay else None)
