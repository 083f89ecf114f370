"""Slides one at a time, here or on a Dask worker: skip what is done, scan the rest, record each
outcome; a bad slide never stops the batch."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from slidescan.batch.summary import SummaryBook
from slidescan.errors import one_line, redact_path
from slidescan.io.outputs import OutputBusy, SlideOutputs
from slidescan.report.outcome import SlideOutcome, outcome_from_previous, outcome_from_report
from slidescan.scan.scan_result import ScanResult
from slidescan.vocabulary import SlideStatus


def outcome_from_result(result: ScanResult) -> SlideOutcome:
    """A finished scan as a summary row."""
    if result.slide_report is None:
        raise ValueError("a scan result without its report")
    return outcome_from_report(result.slide_report, result.slide.name, SlideStatus.done)


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
