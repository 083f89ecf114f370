"""A folder of slides (or a list): the review page, local or Dask runs, patients; summary.csv
follows as slides finish."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from slidescan.batch.patients import PATIENTS_NAME, NodeResult, stage_patients, write_patients
from slidescan.batch.slide_jobs import run_batch, slide_key
from slidescan.engine.weights import load_weights
from slidescan.errors import SlidescanError, one_line
from slidescan.io.outputs import ensure_output_folder
from slidescan.io.slide import dicom_file
from slidescan.report.outcome import SlideOutcome
from slidescan.report.review_page import ReviewPage
from slidescan.scan.scan_result import ScanOptions, ScanResult
from slidescan.scan.scanner import Scanner
from slidescan.vocabulary import SlideStatus

# What OpenSlide reads, plus plain images for the fallback reader. DICOM (.dcm) slides are folders.
SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
     ".png", ".jpg", ".jpeg"}
)  # fmt: skip
_log = logging.getLogger(__name__)


SLIDE_LISTS = (".txt", ".csv")  # a file naming slides, one per line or in a slide/path column


def find_slides(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Slides directly inside ``folder``, or with ``recursive`` in its sub-folders too (sorted;
    hidden files and folders, and slidescan's own outputs, ignored). A DICOM WSI, a folder of
    ``.dcm`` files, is one slide: ``folder`` itself when it is one, else each such sub-folder."""
    if not folder.is_dir():
        raise SlidescanError(f"{folder}: not a directory")
    if dicom_file(folder) is not None:
        return [folder]
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if ((p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
            or (p.is_dir() and dicom_file(p) is not None))
        and not any(part.startswith(".") or part.endswith(".zarr")
                    for part in p.relative_to(folder).parts)
    )  # fmt: skip


def read_slide_list(path: Path) -> list[Path]:
    """The slides a list file names, as batch schedulers write them: one path per line (``.txt``;
    ``#`` comments and blank lines skipped), or a CSV's ``slide`` or ``path`` column. Relative
    paths are relative to the list's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlidescanError(f"{path}: cannot read the slide list ({one_line(exc)})") from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        column = next((c for c in ("slide", "path") if rows and c in rows[0]), None)
        if column is None:
            raise SlidescanError(f"{path}: a slide list CSV needs a 'slide' or 'path' column")
        names = [row[column].strip() for row in rows if (row[column] or "").strip()]
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise SlidescanError(f"{path}: the slide list names no slides")
    slides = [p if p.is_absolute() else path.parent / p for p in map(Path, names)]
    missing = [str(p) for p in slides if not p.exists()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise SlidescanError(f"{path}: no such slide {', '.join(missing[:3])}{more}")
    return slides


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
    recursive: bool = False,
    root: Path | None = None,
) -> list[SlideOutcome]:
    """Scan every slide directly inside the folder ``source`` (with ``recursive``, in its
    sub-folders too, the outputs mirroring them), or the slides ``source`` lists, into
    ``out_dir``, with ``summary.csv`` and the ``index.html`` review page: in this process, or one
    Dask task per slide with ``scheduler`` (see ``batch.cluster``). A slide is known by its path
    relative to ``source`` (its file name in a flat run), or for listed slides, relative to
    ``root`` (the list's folder) when under it. With ``patients`` (slide → patient, one lymph node
    per slide) the patients' pN stages go to ``patients.csv``."""
    if isinstance(source, Path):
        root = source if recursive else None
    if isinstance(source, Path):
        slides = find_slides(source, recursive=recursive)
        if not slides:
            raise SlidescanError(f"{source}: no slide files found")
    else:
        slides = list(source)

    if patients is not None:
        keys = [slide_key(s, root) for s in slides]
        unmapped = sorted(k for k in keys if k not in patients)
        if unmapped:
            more = f" and {len(unmapped) - 3} more" if len(unmapped) > 3 else ""
            raise SlidescanError(
                f"no patient for {', '.join(unmapped[:3])}{more} in the patient map"
            )
    options = options or ScanOptions()
    # A bad weights file or operating point fails here, once, not once per slide.
    loaded = load_weights(weights)
    loaded.card.lesion_thresholds(options.threshold, options.sensitivity)
    ensure_output_folder(out_dir)  # before any scanning, warning or progress bar
    # index.html: never fails the batch
    page = ReviewPage(out_dir, [slide_key(s, root) for s in slides], overlay_dir)
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
                    overlay_dir=overlay_dir, on_outcome=record, root=root,
                )  # fmt: skip
        else:
            outcomes = run_batch(
                slides, out_dir, Scanner(loaded, options), overwrite=options.overwrite,
                overlay_dir=overlay_dir, on_outcome=record, on_result=on_result, root=root,
            )  # fmt: skip
        if patients is not None:
            page.patients = stage_patients(patients, node_results(outcomes))
            write_patients(out_dir / PATIENTS_NAME, page.patients)
        return outcomes
    finally:
        page.write(finished=True)  # also when interrupted: a page that stops reloading
