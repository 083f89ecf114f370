"""A folder of slides (or a list): the review page, local or Dask runs, patients; summary.csv
follows as slides finish."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from slidescan.batch.patients import PATIENTS_NAME, NodeResult, stage_patients, write_patients
from slidescan.batch.slide_jobs import run_batch
from slidescan.engine.weights import load_weights
from slidescan.errors import SlidescanError
from slidescan.io.outputs import ensure_output_folder
from slidescan.report.outcome import SlideOutcome
from slidescan.report.review_page import ReviewPage
from slidescan.scan.scan_result import ScanOptions, ScanResult
from slidescan.scan.scanner import Scanner
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


def node_results(outcomes: Iterable[SlideOutcome]) -> dict[str, NodeResult]:
    """Each slide's category for staging (None when it has no result)."""
    return {
        o.slide: NodeResult(None if o.status in (SlideStatus.failed, SlideStatus.busy)
                            else o.category, bool(o.reliable))
        for o in outcomes
    }  # fmt: skip


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
    or one Dask task per slide with ``scheduler`` (see ``batch.cluster``). With ``patients``
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
