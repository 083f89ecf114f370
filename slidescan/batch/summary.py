"""summary.csv and slidescan.log of an output folder: merged safely by runs that share it."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from slidescan.io.atomic import atomic_write
from slidescan.io.pacing import Pacer
from slidescan.report.outcome import SUMMARY_FIELDS, SlideOutcome
from slidescan.vocabulary import SlideStatus

_log = logging.getLogger(__name__)
LOG_NAME = "slidescan.log"  # beside summary.csv: the traceback of every failed slide


def log_failure(out_dir: Path, outcome: SlideOutcome) -> None:
    """Append a failed slide's full story to ``OUT/slidescan.log`` (summary.csv keeps one line)."""
    if outcome.status != SlideStatus.failed:
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
