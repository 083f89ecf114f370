"""Directories of slides: resumable batch runs and summary.csv; a bad slide never stops the rest."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from slidescan.batch.patients import PATIENTS_NAME, NodeResult, stage_patients, write_patients
from slidescan.batch.summary import SummaryBook
from slidescan.engine.weights import load_weights
from slidescan.errors import SlidescanError, one_line, redact_path
from slidescan.io.outputs import OutputBusy, SlideOutputs, ensure_output_folder
from slidescan.report.outcome import SlideOutcome, outcome_from_previous, outcome_from_report
from slidescan.report.review_page import ReviewPage
from slidescan.scan.scanner import Scanner, ScanOptions, ScanResult
from slidescan.vocabulary import SlideStatus

# What OpenSlide reads, plus plain images for the fallback reader.
SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
     ".dcm", ".png", ".jpg", ".jpeg"}
)  # fmt: skip
_log = logging.getLogger(__name__)


def find_slides(folder: Path) -> list[Path]:
    """Slide files directly inside ``folder`` (sorted; hidden files and partial outputs ignored)."""
    if not folder.is_dir():
        raise SlidescanError(f"{folder}: not a directory")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith(".")
    )


def outcome_from_result(result: ScanResult) -> SlideOutcome:
    """A finished scan as a summary row."""
    if result.slide_report is None:
        raise ValueError("a scan result without its report")
    return outcome_from_report(result.slide_report, result.slide.name, SlideStatus.done)


def node_results(outcomes: Iterable[SlideOutcome]) -> dict[str, NodeResult]:
    """Each slide's category for staging (None when it has no result)."""
    return {
        o.slide: NodeResult(None if o.status in (SlideStatus.failed, SlideStatus.busy)
                            else o.category, bool(o.reliable))
        for o in outcomes
    }  # fmt: skip


class SlideScanner(Protocol):
    """What a batch needs of a scanner (:class:`slidescan.scan.scanner.Scanner`)."""

    def fingerprint(self, slide_path: Path) -> str:
        """The fingerprint a scan of ``slide_path`` would record."""
        ...

    def write(self, slide_path: Path, outputs: SlideOutputs) -> ScanResult:
        """Scan one slide into ``outputs`` (whose lock the caller holds)."""
        ...


def duplicate_outputs(slides: list[Path], out_dir: Path) -> dict[Path, str]:
    """Slides whose output another slide of the batch already claims (a.svs and a.tif → a.zarr),
    with the error to record for them."""
    claimed: dict[Path, str] = {}
    errors = {}
    for slide in slides:
        heatmap = SlideOutputs.in_folder(slide, out_dir).heatmap
        owner = claimed.setdefault(heatmap, slide.name)
        if owner != slide.name:
            errors[slide] = (
                f"{slide.name}: output {heatmap.name} belongs to {owner} in this batch; "
                "rename one of the two slides"
            )
    return errors


def process_slide(
    slide: Path,
    outputs: SlideOutputs,
    scanner: SlideScanner,
    *,
    overwrite: bool = False,
    on_result: Callable[[ScanResult], None] | None = None,
) -> SlideOutcome:
    """Scan one slide of a batch, or take its earlier result when it is complete, made with the
    same settings (fingerprint) and has every output asked for. Failures become rows."""
    start = time.perf_counter()
    try:
        # Decided under the lock: a run that finished the slide a moment ago is seen here.
        with outputs.locked():
            status = SlideStatus.done
            if outputs.is_complete() and not overwrite:
                report = outputs.matching_report(scanner.fingerprint(slide))
                if report is not None and not outputs.extras_missing():
                    previous = outcome_from_previous(slide, outputs.heatmap, report)
                    if previous is not None:
                        return previous
                status = SlideStatus.redone
            result = scanner.write(slide, outputs)
        if on_result is not None:
            on_result(result)
        outcome = outcome_from_result(result)
        outcome.status = status
        return outcome
    except OutputBusy as exc:
        return SlideOutcome(slide=slide.name, status=SlideStatus.busy, error=one_line(exc))
    except Exception as exc:  # any failure is this slide's, never the whole batch's
        return SlideOutcome(
            slide=slide.name, status=SlideStatus.failed,
            seconds=round(time.perf_counter() - start, 2), error=one_line(exc, path=slide),
            detail=redact_path(traceback.format_exc(), slide),
        )  # fmt: skip


def failed(slide: Path, error: str) -> SlideOutcome:
    """A summary row for a slide that could not be scanned."""
    return SlideOutcome(slide=slide.name, status=SlideStatus.failed, error=error)


def run_batch(
    slides: list[Path],
    out_dir: Path,
    scanner: SlideScanner,
    *,
    overwrite: bool = False,
    overlay_dir: Path | None = None,
    on_outcome: Callable[[SlideOutcome], None] | None = None,
    on_result: Callable[[ScanResult], None] | None = None,
) -> list[SlideOutcome]:
    """Scan each slide into ``out_dir``; skip results of the same settings unless ``overwrite``.

    ``on_result`` sees each finished scan, ``on_outcome`` each summary row (scanned or not).

    Failures are recorded (status ``failed`` with the error) and the batch goes on. summary.csv
    keeps up as slides finish (:class:`SummaryBook`) and is complete when the run ends, also by
    an error or Ctrl-C.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[SlideOutcome] = []
    duplicates = duplicate_outputs(slides, out_dir)
    with SummaryBook(out_dir) as book:
        for slide in tqdm(slides, desc="slides", unit="slide", disable=len(slides) < 2):
            if slide in duplicates:
                outcome = failed(slide, duplicates[slide])
            else:
                outputs = SlideOutputs.in_folder(slide, out_dir, overlay_dir)
                outcome = process_slide(
                    slide, outputs, scanner, overwrite=overwrite, on_result=on_result
                )
            outcomes.append(outcome)
            book.record(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return outcomes


def scan_directory(
    source: Path | Sequence[Path],
    out_dir: Path,
    *,
    weights: Path | None = None,
    options: ScanOptions | None = None,
    overlay_dir: Path | None = None,
    scheduler: str | None = None,
    on_outcome: Callable[[SlideOutcome], None] | None = None,
    on_result: Callable[[ScanResult], None] | None = None,
    patients: Mapping[str, str] | None = None,
) -> list[SlideOutcome]:
    """Scan every slide directly inside the folder ``source`` (or the slides ``source`` lists)
    into ``out_dir``, with ``summary.csv`` and the ``index.html`` review page: in this process,
    or one Dask task per slide with ``scheduler`` (see ``scan.cluster``). With ``patients``
    (slide name → patient, one lymph node per slide) the patients' pN stages go to
    ``patients.csv``."""
    if isinstance(source, Path):
        slides = find_slides(source)
        if not slides:
            raise SlidescanError(f"{source}: no slide files found")
    else:
        slides = list(source)

    if patients is not None:
        unmapped = sorted(s.name for s in slides if s.name not in patients)
        if unmapped:
            more = f" and {len(unmapped) - 3} more" if len(unmapped) > 3 else ""
            raise SlidescanError(
                f"no patient for {', '.join(unmapped[:3])}{more} in the patient map"
            )
    ensure_output_folder(out_dir)  # before any scanning, warning or progress bar
    options = options or ScanOptions()
    loaded = load_weights(weights)  # a bad weights file fails here, once, not once per slide
    page = ReviewPage(out_dir, slides, overlay_dir)  # index.html: never fails the batch
    page.write()

    def record(outcome: SlideOutcome) -> None:
        page.add(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    try:
        if scheduler:
            from slidescan.batch.cluster import dask_client, run_batch_on_cluster

            with dask_client(scheduler) as client:
                outcomes = run_batch_on_cluster(
                    slides, out_dir, client, weights=weights, options=options,
                    overlay_dir=overlay_dir, on_outcome=record,
                )  # fmt: skip
        else:
            outcomes = run_batch(
                slides, out_dir, Scanner(loaded, options), overwrite=options.overwrite,
                overlay_dir=overlay_dir, on_outcome=record, on_result=on_result,
            )  # fmt: skip
        if patients is not None:
            page.patients = stage_patients(patients, node_results(outcomes))
            write_patients(out_dir / PATIENTS_NAME, page.patients)
        return outcomes
    finally:
        page.write(finished=True)  # also when interrupted: a page that stops reloading
