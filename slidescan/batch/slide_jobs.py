"""Slides one at a time, here or on a Dask worker: skip what is done, scan the rest, record each
outcome; a bad slide never stops the batch."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from slidescan.batch.summary import SummaryBook
from slidescan.errors import SlidescanError, one_line, redact_path
from slidescan.io.outputs import OutputBusy, SlideOutputs
from slidescan.progress import progress
from slidescan.report.outcome import (
    SlideOutcome,
    outcome_from_previous,
    outcome_from_report,
    under_key,
)
from slidescan.report.slide_report import SlideReport
from slidescan.scan.scan_result import ScanResult
from slidescan.vocabulary import SlideStatus


def slide_key(slide: Path, root: Path | None = None) -> str:
    """How a batch knows a slide: its path relative to ``root`` (the folder scanned recursively,
    or a slide list's folder) when it lies under it, else its file name."""
    if root is not None:
        try:
            return slide.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return slide.name


def outcome_from_result(result: ScanResult) -> SlideOutcome:
    """A finished scan as a summary row."""
    if result.slide_report is None:
        raise ValueError("a scan result without its report")
    return outcome_from_report(result.slide_report, result.slide.name, SlideStatus.done)


class SlideScanner(Protocol):
    """What a batch needs of a scanner (:class:`slidescan.scan.scanner.Scanner`)."""

    def fingerprints(self, slide_path: Path) -> tuple[str, str]:
        """The fingerprints (whole result, heatmap alone) a scan of ``slide_path`` records."""
        ...

    def recall(self, slide_path: Path, outputs: SlideOutputs, previous: SlideReport) -> ScanResult:
        """Redo only the call from the stored heatmap (the caller holds the lock)."""
        ...

    def write(self, slide_path: Path, outputs: SlideOutputs) -> ScanResult:
        """Scan one slide into ``outputs`` (whose lock the caller holds)."""
        ...


def duplicate_outputs(
    slides: list[Path], out_dir: Path, root: Path | None = None
) -> dict[Path, str]:
    """Slides whose output another slide of the batch already claims (a.svs and a.tif → a.zarr),
    with the error to record for them."""
    claimed: dict[Path, Path] = {}
    errors = {}
    for slide in slides:
        heatmap = SlideOutputs.in_folder(slide, out_dir, key=slide_key(slide, root)).heatmap
        owner = claimed.setdefault(heatmap, slide)
        if owner != slide:
            errors[slide] = (
                f"output {heatmap.name} belongs to {owner} in this batch; rename one of the two "
                "slides (or scan their folders with --recursive)"
            )
    return errors


def scan_or_reuse(
    slide: Path,
    outputs: SlideOutputs,
    scanner: SlideScanner,
    *,
    overwrite: bool = False,
    on_result: Callable[[ScanResult], None] | None = None,
) -> SlideOutcome:
    """One slide, single or in a batch: its earlier result when complete, made with the same
    settings and with every output asked for (``skipped``); only a new call when nothing but
    the call's thresholds changed (``recalled``); else a scan (``done``, or ``redone`` over a
    result made otherwise). Errors propagate; :func:`process_slide` records them."""
    # Decided under the lock: a run that finished the slide a moment ago is seen here.
    with outputs.locked():
        result, status = None, SlideStatus.done
        if outputs.is_complete() and not overwrite:
            whole, heatmap = scanner.fingerprints(slide)
            report = outputs.matching_report(whole)
            if report is not None and not outputs.extras_missing():
                previous = outcome_from_previous(slide, outputs.heatmap, report)
                if previous is not None:
                    return previous
            earlier = outputs.matching_report(heatmap, key="heatmap_fingerprint")
            if earlier is not None:
                with contextlib.suppress(ValueError):  # unreadable: scanned again below
                    result = scanner.recall(slide, outputs, SlideReport.from_dict(earlier))
            status = SlideStatus.redone
        elif not overwrite and outputs.foreign():
            raise SlidescanError(
                f"{outputs.heatmap.name}: something that is not a slidescan result is in the "
                "way; overwrite it or choose another output",
                param="overwrite",
            )
        if result is None:
            result = scanner.write(slide, outputs)
    if on_result is not None:
        on_result(result)
    outcome = outcome_from_result(result)
    outcome.status = result.status if result.status == SlideStatus.recalled else status
    return outcome


def process_slide(
    slide: Path,
    outputs: SlideOutputs,
    scanner: SlideScanner,
    *,
    overwrite: bool = False,
    on_result: Callable[[ScanResult], None] | None = None,
    key: str | None = None,
) -> SlideOutcome:
    """:func:`scan_or_reuse` for a batch: a failure becomes the slide's row, which names the
    slide by its ``key`` (default: its file name)."""
    start = time.perf_counter()
    key = key or slide.name

    def labelled(result: ScanResult) -> None:
        if on_result is not None:
            on_result(replace(result, label=key))

    try:
        outcome = scan_or_reuse(slide, outputs, scanner, overwrite=overwrite, on_result=labelled)
        return under_key(outcome, key)
    except OutputBusy as exc:
        return SlideOutcome(slide=key, status=SlideStatus.busy, error=one_line(exc))
    except Exception as exc:  # any failure is this slide's, never the whole batch's
        return SlideOutcome(
            slide=key, status=SlideStatus.failed,
            seconds=round(time.perf_counter() - start, 2), error=_without_name(exc, slide),
            detail=redact_path(traceback.format_exc(), slide),
        )  # fmt: skip


def _without_name(exc: BaseException, slide: Path) -> str:
    """The error's line without the slide's name in front: its row and line name it already."""
    line = one_line(exc, path=slide)
    return line.removeprefix(f"{slide.name}: ")


def failed(slide: Path, error: str, key: str | None = None) -> SlideOutcome:
    """A summary row for a slide that could not be scanned."""
    return SlideOutcome(slide=key or slide.name, status=SlideStatus.failed, error=error)


def run_batch(
    slides: list[Path],
    out_dir: Path,
    scanner: SlideScanner,
    *,
    overwrite: bool = False,
    overlay_dir: Path | None = None,
    on_outcome: Callable[[SlideOutcome], None] | None = None,
    on_result: Callable[[ScanResult], None] | None = None,
    root: Path | None = None,
) -> list[SlideOutcome]:
    """Scan each slide into ``out_dir``; skip results of the same settings unless ``overwrite``.
    With ``root`` (a recursive run) the outputs mirror the slides' folders under it.

    ``on_result`` sees each finished scan, ``on_outcome`` each summary row (scanned or not).

    Failures are recorded (status ``failed`` with the error) and the batch goes on. summary.csv
    keeps up as slides finish (:class:`SummaryBook`) and is complete when the run ends, also by
    an error or Ctrl-C.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[SlideOutcome] = []
    duplicates = duplicate_outputs(slides, out_dir, root)
    with SummaryBook(out_dir) as book:
        for slide in progress(
            slides, desc="slides", unit="slide", leave=False, show=len(slides) > 1
        ):
            key = slide_key(slide, root)
            if slide in duplicates:
                outcome = failed(slide, duplicates[slide], key)
            else:
                outputs = SlideOutputs.in_folder(slide, out_dir, overlay_dir, key=key)
                outcome = process_slide(
                    slide, outputs, scanner, overwrite=overwrite, on_result=on_result, key=key
                )
            outcomes.append(outcome)
            book.record(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return outcomes
