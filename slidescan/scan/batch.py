"""Directories of slides: resumable batch runs and summary.csv; a bad slide never stops the rest."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from slidescan.engine.weights import load_weights
from slidescan.errors import SlidescanError, one_line, redact_path
from slidescan.io.atomic import atomic_write
from slidescan.io.outputs import OutputBusy, SlideOutputs, ensure_output_folder
from slidescan.scan.pacing import Pacer
from slidescan.scan.patients import PATIENTS_NAME, NodeResult, stage_patients, write_patients
from slidescan.scan.review_page import ReviewPage
from slidescan.scan.scanner import Scanner, ScanOptions, ScanResult
from slidescan.scan.slide_report import SlideReport

# What OpenSlide reads, plus plain images for the fallback reader.
SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
     ".dcm", ".png", ".jpg", ".jpeg"}
)  # fmt: skip
_log = logging.getLogger(__name__)
LOG_NAME = "slidescan.log"  # beside summary.csv: the traceback of every failed slide
SUMMARY_FIELDS = [
    "slide", "status", "positive", "category", "largest_lesion_mm", "lesions", "reliable",
    "flags", "tiles", "seconds", "heatmap", "error", "finished",
]  # fmt: skip


@dataclass
class SlideOutcome:
    """One row of summary.csv."""

    slide: str
    # done | redone (an earlier result made with other settings, or damaged, was replaced) |
    # skipped (complete, same settings) | busy (another run is writing it) | failed
    status: str
    positive: bool | None = None
    category: str = ""
    largest_lesion_mm: float | None = None
    lesions: int | None = None
    reliable: bool | None = None
    flags: str = ""  # why the call is unreliable (out of distribution, scale)
    tiles: int | None = None
    seconds: float | None = None
    heatmap: str = ""
    error: str = ""
    detail: str = ""  # the failure's full traceback: for LOG_NAME, never for summary.csv
    finished: str = ""  # when this run recorded it (UTC, ISO 8601): the newer row wins a merge

    def row(self) -> dict[str, object]:
        """The CSV row (empty cells for unknowns)."""
        values: dict[str, object] = {
            "slide": self.slide,
            "status": self.status,
            "positive": _bool_cell(self.positive),
            "category": self.category,
            "largest_lesion_mm": (
                "" if self.largest_lesion_mm is None else f"{self.largest_lesion_mm:.3f}"
            ),
            "lesions": "" if self.lesions is None else self.lesions,
            "reliable": _bool_cell(self.reliable),
            "flags": self.flags,
            "tiles": "" if self.tiles is None else self.tiles,
            "seconds": "" if self.seconds is None else f"{self.seconds:.2f}",
            "heatmap": self.heatmap,
            "error": self.error,
            "finished": self.finished,
        }
        return values


def _bool_cell(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def find_slides(folder: Path) -> list[Path]:
    """Slide files directly inside ``folder`` (sorted; hidden files and partial outputs ignored)."""
    if not folder.is_dir():
        raise SlidescanError(f"{folder}: not a directory")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith(".")
    )


def outcome_from_report(report: SlideReport, slide: str, status: str) -> SlideOutcome:
    """A slide's summary row, derived from its report."""
    call, check = report.call, report.distribution
    return SlideOutcome(
        slide=slide, status=status, positive=call.positive, category=call.category,
        largest_lesion_mm=call.largest_diameter_mm, lesions=len(call.lesions),
        reliable=report.reliable, flags="; ".join(check.reasons), tiles=report.tiles_scanned,
        seconds=round(report.wall_seconds, 2), heatmap=report.heatmap,
    )  # fmt: skip


def outcome_from_result(result: ScanResult) -> SlideOutcome:
    """A finished scan as a summary row."""
    if result.slide_report is None:
        raise ValueError("a scan result without its report")
    return outcome_from_report(result.slide_report, result.slide.name, "done")


def outcome_from_previous(
    slide: Path, heatmap: Path, report: dict[str, Any]
) -> SlideOutcome | None:
    """A slide finished by an earlier run, from its JSON report; None when the report is
    incomplete (then the slide is scanned again)."""
    try:
        parsed = SlideReport.from_dict(report)
    except ValueError:
        return None
    return outcome_from_report(replace(parsed, heatmap=heatmap.name), slide.name, "skipped")


def node_results(outcomes: Iterable[SlideOutcome]) -> dict[str, NodeResult]:
    """Each slide's category for staging (None when it has no result)."""
    return {
        o.slide: NodeResult(o.category if o.status not in ("failed", "busy") else None,
                            bool(o.reliable))
        for o in outcomes
    }  # fmt: skip


def log_failure(out_dir: Path, outcome: SlideOutcome) -> None:
    """Append a failed slide's full story to ``OUT/slidescan.log`` (summary.csv keeps one line)."""
    if outcome.status != "failed":
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    story = outcome.detail.rstrip() or outcome.error
    with open(out_dir / LOG_NAME, "a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {outcome.slide}: FAILED: {outcome.error}\n{story}\n\n")


def write_summary(path: Path, outcomes: Iterable[SlideOutcome]) -> None:
    """Merge ``outcomes`` (news: pass each row once, when it happens) into summary.csv, atomically.

    Several runs may share an output folder (a SLURM array, a Dask retry, a rerun): each keeps
    the rows of slides it has no news about, and its "busy" note never hides another run's result
    for that slide. The read-merge-write happens under an exclusive lock on the folder, so two
    runs finishing at once cannot drop each other's rows.
    """
    with _folder_lock(path.parent):
        rows = merge_summary_rows(read_summary_rows(path), [o.row() for o in outcomes])
        with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def read_summary_rows(path: Path) -> list[dict[str, object]]:
    """The rows of an existing summary.csv (none if it is missing or unreadable), in our columns."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [
                {name: row.get(name) or "" for name in SUMMARY_FIELDS}
                for row in csv.DictReader(fh)
                if row.get("slide")
            ]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def merge_summary_rows(
    existing: list[dict[str, object]], new: list[dict[str, object]]
) -> list[dict[str, object]]:
    """``existing`` rows updated by ``new`` ones, slide by slide, sorted by slide name as
    :func:`find_slides` lists them. A new row leaves another run's row in place when it is only
    "busy" or was recorded earlier (rows are written a little after they happen)."""
    merged = {str(row["slide"]): row for row in existing}
    for row in new:
        old = merged.get(str(row["slide"]))
        if old is not None:
            if row["status"] == "busy" and old["status"] != "busy":
                continue
            if str(old.get("finished") or "") > str(row.get("finished") or ""):
                continue
        merged[str(row["slide"])] = row
    return [merged[name] for name in sorted(merged)]


class SummaryBook:
    """A run's bookkeeping per finished slide: the failure log, then its row in summary.csv.

    Rows are merged in paced (:class:`Pacer`): after every slide in batches of hundreds, every
    few seconds in batches of many thousands, where each rewrite costs tenths of a second. Use it
    as a context manager: whatever is pending is written when the run ends, also by an error or
    Ctrl-C (then a failure to write is only logged, so the original error is what is reported).
    Only a run killed outright (SIGKILL) can miss its last rows; a rerun restores them.
    """

    def __init__(self, out_dir: Path, pacer: Pacer | None = None) -> None:
        self.out_dir = out_dir
        self.path = out_dir / "summary.csv"
        self.pacer = pacer or Pacer()
        self._pending: list[SlideOutcome] = []

    def __enter__(self) -> SummaryBook:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.flush()
            return
        try:
            self.flush()
        except Exception as err:
            _log.warning("%s: could not write the last rows: %s", self.path, err)

    def record(self, outcome: SlideOutcome) -> None:
        """Stamp the row, log a failure's full story now, merge the row in when due."""
        outcome.finished = outcome.finished or datetime.now(UTC).isoformat(timespec="seconds")
        self._pending.append(outcome)
        log_failure(self.out_dir, outcome)
        if self.pacer.due():
            self.flush()

    def flush(self) -> None:
        """Merge every pending row into summary.csv."""
        if not self._pending:
            return
        with self.pacer.timed():
            write_summary(self.path, self._pending)  # only news: older rows may be another run's
        self._pending.clear()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (POSIX flock; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: runs sharing a folder there may lose a summary row
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. NFS without lock support: a lost row beats a dead batch
            _log.warning("%s: no lock for summary.csv (%s); writing without it", folder, exc)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
            status = "done"
            if outputs.is_complete() and not overwrite:
                report = outputs.matching_report(scanner.fingerprint(slide))
                if report is not None and not outputs.extras_missing():
                    previous = outcome_from_previous(slide, outputs.heatmap, report)
                    if previous is not None:
                        return previous
                status = "redone"
            result = scanner.write(slide, outputs)
        if on_result is not None:
            on_result(result)
        outcome = outcome_from_result(result)
        outcome.status = status
        return outcome
    except OutputBusy as exc:
        return SlideOutcome(slide=slide.name, status="busy", error=one_line(exc))
    except Exception as exc:  # any failure is this slide's, never the whole batch's
        return SlideOutcome(
            slide=slide.name, status="failed", seconds=round(time.perf_counter() - start, 2),
            error=one_line(exc, path=slide), detail=redact_path(traceback.format_exc(), slide),
        )  # fmt: skip


def failed(slide: Path, error: str) -> SlideOutcome:
    """A summary row for a slide that could not be scanned."""
    return SlideOutcome(slide=slide.name, status="failed", error=error)


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
            from slidescan.scan.cluster import dask_client, run_batch_on_cluster

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
