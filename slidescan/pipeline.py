"""Scan one slide: reader → tissue mask → tile grid → DataLoader → model → zarr heatmap → call.

Outputs are written under temporary names and renamed only when complete, so an interrupted scan
never leaves anything that looks finished. The JSON report is renamed last: its presence marks a
complete result.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from slidescan import RESEARCH_USE_NOTICE, __version__
from slidescan.atomic import partial_path
from slidescan.cell_scoring import CellScorer, ScoringError
from slidescan.device import default_scan_batch, default_scan_workers, pin_memory
from slidescan.errors import SlidescanError, one_line
from slidescan.heatmap import HeatmapWriter, read_heatmap
from slidescan.inference import make_predictor
from slidescan.slide import Slide, open_slide
from slidescan.slide_call import SlideCall, call_slide, smoothing_cells
from slidescan.slide_tiles import BlockBatches, SlideTileDataset, collate_blocks
from slidescan.tiling import TileGrid, make_grid, tissue_fraction
from slidescan.tissue import mask_thumbnail
from slidescan.weights import LoadedModel, ModelCard


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
    progress: bool = True


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


def report_path(heatmap: Path) -> Path:
    """The JSON report written beside a heatmap: ``x.zarr`` → ``x.json``."""
    return heatmap.with_suffix(".json")


def is_complete(heatmap: Path) -> bool:
    """True when a previous scan finished: both the heatmap and its report exist."""
    return heatmap.is_dir() and report_path(heatmap).is_file()


def read_report(heatmap: Path) -> dict[str, Any]:
    """The JSON report of a completed scan."""
    try:
        return json.loads(report_path(heatmap).read_text())
    except (OSError, ValueError) as exc:
        raise SlidescanError(f"{report_path(heatmap)}: unreadable report ({exc})") from None


def _interrupted(heatmap: Path) -> bool:
    """A slidescan heatmap whose report was never written: a scan killed between the renames."""
    if not heatmap.is_dir() or report_path(heatmap).exists():
        return False
    try:
        read_heatmap(heatmap)
    except SlidescanError:
        return False  # not ours: never delete it without overwrite
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


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
        # --threshold overrides both; otherwise tiles use the card's patch threshold and the
        # slide call its (stricter) slide threshold, calibrated on validation data.
        self.tile_threshold = options.threshold if options.threshold is not None else card.threshold
        self.threshold = (
            options.threshold
            if options.threshold is not None
            else card.slide_threshold
            if card.slide_threshold is not None
            else card.threshold
        )
        self.stride = options.stride
        if options.dense:
            # Fully convolutional models (torch or exported) say so with their output stride.
            dense_stride = getattr(self.model, "dense_stride", None)
            if dense_stride is None:
                raise SlidescanError(
                    f"--dense needs a fully convolutional model, not {loaded.card.model}"
                )
            if options.stride not in (None, dense_stride):
                raise SlidescanError(f"--dense scans at stride {dense_stride}; drop --stride")
            self.stride = dense_stride
        # Dense regions amortise the receptive-field margin over more cells: bigger blocks.
        # 32 cells a side (1,088 px) keeps CPU memory small; a GPU wants more work per forward
        # pass, so it gets 64 (2,112 px, a few hundred MB of fp16 activations).
        dense_block = 64 if self.device.type == "cuda" else 32
        self.block = options.block or (dense_block if options.dense else 8)

    def scan(self, slide_path: Path, out: Path, overlay: Path | None = None) -> ScanResult:
        """Scan ``slide_path`` into the zarr heatmap ``out`` (+ JSON report, optional overlay)."""
        opts = self.options
        if out.exists() and not opts.overwrite and not _interrupted(out):
            raise SlidescanError(f"{out} already exists (use --overwrite to redo it)")
        if report_path(out).exists() and not out.exists() and not opts.overwrite:
            raise SlidescanError(
                f"{report_path(out)} exists and would be replaced (use --overwrite)"
            )
        start = time.perf_counter()
        card = self.loaded.card
        tmp = partial_path(out)
        tmp_report = partial_path(report_path(out))
        _remove(tmp)
        _remove(tmp_report)
        try:
            with open_slide(slide_path, mpp=opts.mpp, reader=opts.reader) as slide:
                grid, tissue = plan_grid(slide, card, self.stride, opts.min_tissue)
                cells = np.argwhere(tissue)
                attrs = self._attrs(slide_path, slide, grid)
                # Each worker would hold its own copy of a plain image: read it here instead.
                workers = 0 if slide.in_memory else self.workers
                thumb = slide.thumbnail(1024) if overlay is not None else None
            writer = HeatmapWriter(tmp, grid.shape, attrs=attrs, overwrite=True)
            writer.write_tissue(tissue)
            self._infer(slide_path, grid, cells, writer, workers)
            probability = writer.probability
            cell_mm = grid.stride * card.mpp / 1000.0
            call = call_slide(
                probability, threshold=self.threshold, tile_threshold=self.tile_threshold,
                cell_mm=cell_mm, smoothing=smoothing_cells(grid.patch_size, grid.stride),
            )  # fmt: skip
            seconds = time.perf_counter() - start
            summary = {
                "call": call.to_dict(),
                "tiles_scanned": len(cells),
                "wall_seconds": round(seconds, 3),
            }
            writer.update_attrs(**summary)
            writer.close()
            report = self._report(slide_path, out, attrs, summary)
            overlay_png = None
            if overlay is not None and thumb is not None:
                overlay_png = self._overlay(thumb, probability, grid, slide_path, call, overlay)
        except BaseException:
            _remove(tmp)
            _remove(tmp_report)
            raise
        # Replaced: an existing result (with overwrite) or an interrupted one's heatmap.
        _remove(report_path(out))
        _remove(out)
        os.replace(tmp, out)
        os.replace(report, report_path(out))  # last: its presence marks completion
        return ScanResult(slide_path, out, report_path(out), call, len(cells), seconds, overlay_png)

    def _infer(
        self, slide_path: Path, grid: Any, cells: np.ndarray, writer: HeatmapWriter, workers: int
    ) -> None:
        if len(cells) == 0:
            return
        opts = self.options
        dataset = SlideTileDataset(
            slide_path, grid, cells, mpp=opts.mpp, block=self.block, dense=opts.dense,
            reader=opts.reader,
        )  # fmt: skip
        scorer = CellScorer(self.loaded, self.predictor, dense=opts.dense, tta=opts.tta)
        score_in_workers = self._scores_in_workers(workers)
        batching: dict[str, Any] = (
            # Dense: an item is one region for a fully convolutional pass.
            {"batch_size": None}
            if opts.dense
            else {"batch_sampler": BlockBatches(dataset, self.batch_size)}
        )
        if score_in_workers:
            batching["collate_fn"] = scorer.collate
        elif not opts.dense:
            # Workers join blocks into model batches in shared memory: the main process only
            # runs the model (concatenating there cost ~15% of a CPU scan).
            batching["collate_fn"] = collate_blocks
        loader = DataLoader(
            dataset,
            num_workers=workers,
            pin_memory=pin_memory(self.device),
            # Scoring workers hand back only probabilities, so they may run further ahead; pixel
            # batches in flight live in shared memory (64 MB by default in Docker).
            prefetch_factor=(4 if score_in_workers else 2) if workers else None,
            **batching,
        )
        bar = tqdm(
            total=len(cells), desc=slide_path.name, unit="tile", leave=False,
            disable=not opts.progress, dynamic_ncols=True,
        )  # fmt: skip
        try:
            what = "reading or scoring tiles" if score_in_workers else "reading tiles"
            for batch in _reading(loader, slide_path, what):
                probs, scored = batch if score_in_workers else scorer(*batch)
                writer.write_cells(scored.numpy(), probs.numpy())
                bar.update(len(scored))
        except SlidescanError:
            raise
        except Exception as exc:  # e.g. out of GPU memory: still one line, naming the slide
            raise SlidescanError(f"{slide_path.name}: inference failed: {one_line(exc)}") from exc
        finally:
            bar.close()
            dataset.close()
        writer.flush()

    def _scores_in_workers(self, workers: int) -> bool:
        """On a CPU the workers run the model too (see cell_scoring); a GPU is fed by them."""
        return workers > 0 and self.device.type == "cpu"

    def _attrs(self, slide_path: Path, slide: Any, grid: Any) -> dict[str, Any]:
        card = self.loaded.card
        level = slide.best_level_for_mpp(card.mpp)
        return {
            "slide_path": str(slide_path.resolve()),
            "slide_dimensions": list(slide.dimensions),
            "slide_mpp": slide.mpp,
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
            "model": card.model,
            "weights_sha256": self.loaded.sha256,
            "engine": self.engine,
            "device": str(self.device),
            "threshold": self.threshold,
            "tile_threshold": self.tile_threshold,
            "slidescan_version": __version__,
            "notice": RESEARCH_USE_NOTICE,
        }

    def _report(
        self, slide_path: Path, out: Path, attrs: dict[str, Any], summary: dict[str, Any]
    ) -> Path:
        report = {
            "notice": RESEARCH_USE_NOTICE,
            "slide": slide_path.name,
            "heatmap": out.name,
            **summary,
            "attributes": attrs,
        }
        tmp = partial_path(report_path(out))
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        return tmp

    def _overlay(
        self,
        thumb: tuple[np.ndarray, float],
        probability: np.ndarray,
        grid: Any,
        slide_path: Path,
        call: SlideCall,
        overlay: Path,
    ) -> Path:
        from slidescan.overlay import grid_extent_in_thumbnail, render_overlay

        image, downsample = thumb
        # A cell shows the central stride×stride square of its patch.
        origin = grid.cell_region_level0(0, 0)[:2]
        extent = grid_extent_in_thumbnail(
            probability.shape, grid.stride * grid.scale, downsample, origin
        )
        verdict = "POSITIVE" if call.positive else "negative"
        title = f"{slide_path.name}: {verdict} (score {call.score:.2f})"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        tmp = overlay.with_name(f".{overlay.name}.partial.png")
        try:
            render_overlay(
                image, probability, tmp, title=title, threshold=self.tile_threshold,
                thumbnail_extent=extent,
            )  # fmt: skip
        except BaseException:
            _remove(tmp)
            raise
        os.replace(tmp, overlay)
        return overlay


def _reading(
    loader: DataLoader, slide_path: Path, what: str = "reading tiles"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``loader``, turning read/decode failures (often raised inside a worker, e.g. a
    truncated tile), model failures in workers and dead workers (``what`` they were doing) into
    one-line SlidescanErrors that name the slide."""
    it = iter(loader)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except SlidescanError:
            raise
        except ScoringError as exc:
            raise SlidescanError(f"{slide_path.name}: inference failed: {one_line(exc)}") from exc
        except Exception as exc:
            raise SlidescanError(f"{slide_path.name}: failed {what}: {one_line(exc)}") from exc
        yield item


def describe(result: ScanResult) -> str:
    """One line per slide for the terminal."""
    c = result.call
    verdict = "POSITIVE" if c.positive else "negative"
    return (
        f"{result.slide.name}: {verdict}  score {c.score:.3f} (threshold {c.threshold:.3f})  "
        f"positive tiles {c.positive_tiles}/{result.tiles}  largest region "
        f"{c.largest_region_mm2:.3f} mm²  {result.seconds:.1f} s  [research use only]"
    )
