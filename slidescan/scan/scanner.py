"""Scan one slide: reader → tissue mask → tile grid → DataLoader → model → zarr heatmap → call.

Outputs go through :mod:`slidescan.io.outputs`: written under this run's own temporary names while
the slide's lock is held, then renamed into place, the JSON report last. An interrupted scan never
leaves anything that looks finished, and every report carries the fingerprint of its settings.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
from slidescan.engine.weights import LoadedModel
from slidescan.errors import SlidescanError, one_line
from slidescan.io.heatmap import HeatmapWriter, read_heatmap, update_heatmap_attrs
from slidescan.io.outputs import SlideOutputs, Staging, fingerprint
from slidescan.io.slide import DEFAULT_MPP_SOURCE, Slide, open_slide, slide_bytes
from slidescan.progress import progress
from slidescan.report.slide_report import NO_TISSUE_WARNING, SlideReport
from slidescan.scan.call_outputs import (
    CALL_SETTINGS,
    CallInputs,
    distribution_of,
    make_call,
    slide_report,
    write_geojson,
    write_overlay,
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
from slidescan.scan.scan_result import ScanOptions, ScanResult
from slidescan.scan.slide_geometry import SlideGeometry, check_grid_scale, plan_grid
from slidescan.scan.slide_tiles import SlideTileDataset
from slidescan.scan.tiling import TileGrid
from slidescan.scan.tissue import TISSUE_MASK_VERSION
from slidescan.vocabulary import SlideStatus


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
        self.seed_threshold, self.extent_threshold = card.lesion_thresholds(
            options.threshold, options.sensitivity
        )
        # Named in reports, so a validation says which point its figures hold for.
        self.operating_point = "custom" if options.threshold is not None else options.sensitivity
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
                raise SlidescanError(
                    f"dense scans at stride {stride}; leave stride unset", param="stride"
                )
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

    def settings(self, mpp_source: str | None = None) -> dict[str, Any]:
        """Everything besides the slide that changes a result (the fingerprint's input).

        ``default_mpp`` counts only for a slide whose scale came from it (``mpp_source``): a
        slide with its own µm/px gets the same result with or without it.
        """
        card, opts = self.loaded.card, self.options
        return {
            "weights_sha256": self.loaded.sha256,
            "model": card.model,
            "engine": self.engine,
            "mpp_override": opts.mpp,
            "default_mpp": opts.default_mpp if mpp_source == DEFAULT_MPP_SOURCE else None,
            "reader": opts.reader,
            "stride": self.stride or card.input_size,
            "dense": opts.dense,
            "tta": opts.tta,
            "min_tissue": opts.min_tissue,
            "tissue_mask": TISSUE_MASK_VERSION,
            "seed_threshold": self.seed_threshold,
            "extent_threshold": self.extent_threshold,
            "slidescan_version": __version__,
            # Only when not the standard: results of earlier versions (which had none) stay valid.
            **(
                {"operating_point": self.operating_point}
                if self.operating_point != "standard"
                else {}
            ),
            # Only when on: results of earlier versions (which had none) stay valid.
            **({"stain_norm": self.stain_norm} if self.stain_norm != "none" else {}),
        }

    def fingerprint(self, slide_path: Path) -> str:
        """The fingerprint a scan of ``slide_path`` with these settings records."""
        return self.fingerprints(slide_path)[0]

    def fingerprints(self, slide_path: Path, mpp_source: str | None = None) -> tuple[str, str]:
        """(the whole result's, the heatmap's alone) fingerprints of a scan of ``slide_path``:
        the heatmap's leaves out the call's thresholds."""
        if mpp_source is None and self.options.mpp is None and self.options.default_mpp:
            # Whether --default-mpp applies depends on the slide's own metadata.
            opts = self.options
            with open_slide(slide_path, default_mpp=opts.default_mpp, reader=opts.reader) as opened:
                mpp_source = opened.mpp_source
        settings = self.settings(mpp_source)
        file = {"slide": slide_path.name, "slide_bytes": slide_bytes(slide_path)}
        heatmap = {k: v for k, v in settings.items() if k not in CALL_SETTINGS}
        return fingerprint({**settings, **file}), fingerprint({**heatmap, **file})

    def recall(self, slide_path: Path, outputs: SlideOutputs, previous: SlideReport) -> ScanResult:
        """Redo only the call (lesions, category, report, GeoJSON, overlay) from the stored
        heatmap of a result whose heatmap these settings would make again; the caller holds
        ``outputs.locked()``."""
        start = time.perf_counter()
        probability, tissue, attrs = read_heatmap(outputs.heatmap)
        inputs = CallInputs(
            probability, tissue, SlideGeometry.from_attrs(attrs), distribution_of(previous),
            previous.tiles_scanned,
        )  # fmt: skip
        attrs = {**previous.attributes, "seed_threshold": self.seed_threshold,
                 "extent_threshold": self.extent_threshold,
                 "operating_point": self.operating_point}  # fmt: skip
        thumb = None
        if outputs.overlay is not None:
            opts = self.options
            with open_slide(
                slide_path, mpp=opts.mpp, default_mpp=opts.default_mpp, reader=opts.reader
            ) as slide:
                thumb = slide.thumbnail(1024)
        with outputs.staged() as staging:
            shutil.copytree(outputs.heatmap, staging.heatmap)
            result = self._finish(slide_path, outputs, staging, inputs, attrs, thumb, start)
            staging.commit()
        return replace(result, status=SlideStatus.recalled)

    def scan(self, slide_path: Path, out: Path, overlay: Path | None = None) -> ScanResult:
        """Scan ``slide_path`` into the zarr heatmap ``out`` (+ JSON report, optional overlay).

        An existing result is replaced only with ``--overwrite``; one left by an interrupted scan
        always is. Another run writing ``out`` raises ``OutputBusy``.
        """
        outputs = SlideOutputs(out, overlay)
        with outputs.locked():
            if not self.options.overwrite:
                if out.exists() and not outputs.interrupted():
                    raise SlidescanError(
                        f"{out} already exists (overwrite it to redo it)", param="overwrite"
                    )
                if outputs.report.exists() and not out.exists():
                    raise SlidescanError(
                        f"{outputs.report} exists and would be replaced (overwrite it to redo it)",
                        param="overwrite",
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
        # Opened once, here; DataLoader workers open their own handles (after fork).
        with open_slide(
            slide_path, mpp=opts.mpp, default_mpp=opts.default_mpp, reader=opts.reader
        ) as slide:
            if not opts.any_scale:
                check_grid_scale(slide, card)
            grid, tissue = plan_grid(slide, card, self.stride, opts.min_tissue)
            geometry = SlideGeometry.of(slide, grid)
            cells = np.argwhere(tissue)
            attrs = self._attrs(slide_path, geometry)
            stain = self._fit_stain(slide, grid, cells)
            if stain is not None:
                attrs["stain_norm"] = {"method": self.stain_norm, "fitted": stain.source.to_dict()}
            # Each worker would hold its own copy of a plain image: read it here instead.
            workers = 0 if slide.in_memory else self.workers
            thumb = slide.thumbnail(1024) if outputs.overlay is not None else None
            writer = HeatmapWriter(
                staging.heatmap, grid.shape, attrs=attrs, overwrite=True,
                slide_mpp=geometry.slide_mpp, cell_origin_level0=geometry.cell_origin_level0,
                cell_level0_px=geometry.cell_level0_px,
            )  # fmt: skip
            writer.write_tissue(tissue)
            self._infer(slide, grid, cells, writer, workers, stain)
            distribution = combine(
                self._check_distribution(slide, grid, cells, stain),
                check_scale(slide.mpp, card.mpp),
            )
            if len(cells) == 0:  # nothing was looked at: not a negative anyone may trust
                distribution = combine(distribution, (NO_TISSUE_WARNING,))
            inputs = CallInputs(writer.probability, tissue, geometry, distribution, len(cells))
            return self._finish(
                slide_path, outputs, staging, inputs, attrs, thumb, start, writer=writer
            )

    def _finish(
        self,
        slide_path: Path,
        outputs: SlideOutputs,
        staging: Staging,
        inputs: CallInputs,
        attrs: dict[str, Any],
        thumb: tuple[np.ndarray, float] | None,
        start: float,
        *,
        writer: HeatmapWriter | None = None,
    ) -> ScanResult:
        """The call from the heatmap, and the report, GeoJSON and overlay it writes."""
        call = make_call(
            inputs.probability, inputs.geometry, self.seed_threshold, self.extent_threshold
        )
        seconds = time.perf_counter() - start
        source = inputs.geometry.mpp_source
        report = slide_report(
            slide_path.name, outputs.heatmap, inputs, call, seconds=seconds,
            fingerprints=self.fingerprints(slide_path, source),
            settings=self.settings(source), attributes=attrs,
        )  # fmt: skip
        if writer is not None:
            writer.update_attrs(**report.summary())
            writer.close()
        else:
            # A recall: the copied heatmap takes the new call and its thresholds.
            thresholds = {k: attrs[k] for k in CALL_SETTINGS}
            update_heatmap_attrs(staging.heatmap, **report.summary(), **thresholds)
        report.write(staging.report)
        write_geojson(staging.geojson, call, inputs.geometry, slide_path.name, report.fingerprint)
        if thumb is not None and staging.overlay is not None:
            write_overlay(staging.overlay, thumb, inputs, call, slide_path.name)
        return ScanResult(
            slide_path, outputs.heatmap, outputs.report, call, inputs.tiles_scanned, seconds,
            outputs.overlay, inputs.distribution, report,
        )  # fmt: skip

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
        slide: Slide,
        grid: TileGrid,
        cells: np.ndarray,
        stain: StainMap | None,
        sample: int = 256,
    ) -> DistributionCheck:
        """Embed a seeded random sample of tissue tiles and compare them with training."""
        if self.reference is None or len(cells) == 0:
            return DistributionCheck(False)
        pick = np.random.default_rng(0).permutation(len(cells))[:sample]
        dataset = SlideTileDataset(
            slide.path, grid, cells[np.sort(pick)], mpp=slide.mpp, block=1,
            reader=self.options.reader, stain=stain, slide=slide,
        )  # fmt: skip
        model = self.loaded.model
        normalizer = Normalizer(self.loaded.card, next(model.parameters()).device)
        try:
            # At most `sample` tiles (~7 MB): read them all, score them 64 at a time.
            tiles = torch.cat([dataset[i][0] for i in range(len(dataset))])
            features = feature_batches(model, tiles.split(64), normalizer)
        except Exception as exc:
            raise SlidescanError(
                f"{slide.path.name}: distribution check failed: {one_line(exc)}"
            ) from exc
        finally:
            dataset.close()
        return check_features(self.reference.distances(features), self.reference.patch_threshold)

    def _infer(
        self,
        slide: Slide,
        grid: TileGrid,
        cells: np.ndarray,
        writer: HeatmapWriter,
        workers: int,
        stain: StainMap | None,
    ) -> None:
        if len(cells) == 0:
            return
        opts = self.options
        # Workers reopen the slide: hand them the scale chosen here.
        dataset = SlideTileDataset(
            slide.path, grid, cells, mpp=slide.mpp, block=self.block, dense=self.dense,
            reader=opts.reader, stain=stain, slide=slide if workers == 0 else None,
        )  # fmt: skip
        runner = TileRunner(
            CellScorer(self.loaded, self.predictor, dense=self.dense, tta=opts.tta),
            where=choose_runner(opts.runner, workers, self.device), workers=workers,
            batch_size=self.batch_size, dense=self.dense, device=self.device,
        )  # fmt: skip
        bar = progress(
            total=len(cells), desc=slide.path.name, unit="tile", leave=False, show=opts.progress
        )
        try:
            for probs, scored in runner.run(dataset, slide.path.name):
                writer.write_cells(scored.numpy(), probs.numpy())
                bar.update(len(scored))
        finally:
            bar.close()
            dataset.close()
        writer.flush()

    def _attrs(self, slide_path: Path, geometry: SlideGeometry) -> dict[str, Any]:
        card = self.loaded.card
        return {
            # File names often carry patient identifiers; whole paths reveal more (site, study).
            "slide_path": str(slide_path.resolve()) if self.options.full_paths else slide_path.name,
            **geometry.to_attrs(),
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
            "operating_point": self.operating_point,
            "slidescan_version": __version__,
            "notice": RESEARCH_USE_NOTICE,
        }


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
