"""The life of one slide's outputs: names, temporary names, lock, fingerprint, completeness, commit.

Single runs, directory runs and Dask tasks all go through :class:`SlideOutputs`, so they agree on
what "done" means:

* A result is **complete** when its JSON report exists: it is renamed into place last.
* It **matches** a run when its report carries the same fingerprint: a digest of everything that
  changes the result (weights, model, scale, grid, thresholds, engine, version...). Directory runs
  skip only complete, matching results and redo the rest.
* While a slide is written, an exclusive lock file beside it names the host and process; a second
  run (a SLURM array task, a Dask retry) sees it and leaves the slide alone. A lock whose process is
  gone (same host) or that is older than :data:`STALE_LOCK_SECONDS` is stale and taken over.
* Temporary names are unique to each writer (``.X.zarr.<host>-<pid>-<random>.partial``), so two
  writers never delete or mix each other's files; nothing under a temporary name looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from slidescan.errors import SlidescanError
from slidescan.io.atomic import partial_path, writer_token
from slidescan.io.heatmap import read_heatmap

_log = logging.getLogger(__name__)
STALE_LOCK_SECONDS = 12 * 3600  # a slide never takes this long; a lock this old was abandoned
FINGERPRINT_KEY = "fingerprint"


class OutputBusy(SlidescanError):
    """Another live run holds the slide's lock."""


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short digest of ``settings`` (JSON-able): equal settings, equal fingerprints."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        # A writer's background thread (zarr's I/O loop, on Ctrl-C) may still be renaming files
        # in there: what vanished meanwhile is fine; what appeared is removed on the next pass.
        for _ in range(3):
            shutil.rmtree(path, onerror=_ignore_missing)
            if not path.exists():
                return
            time.sleep(0.05)
        shutil.rmtree(path)
        return
    # Nothing there, or not even its folder: nothing to remove.
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        path.unlink()


def report_path(heatmap: Path) -> Path:
    """The JSON report beside a heatmap: ``x.zarr`` → ``x.json``."""
    return heatmap.with_suffix(".json")


def geojson_path(heatmap: Path) -> Path:
    """The QuPath lesion annotations beside a heatmap: ``x.zarr`` → ``x.geojson``."""
    return heatmap.with_suffix(".geojson")


def is_complete(heatmap: Path) -> bool:
    """True when a scan finished here: heatmap and report both exist."""
    return heatmap.is_dir() and report_path(heatmap).is_file()


def read_report(heatmap: Path) -> dict[str, Any]:
    """The JSON report of a completed scan."""
    try:
        return json.loads(report_path(heatmap).read_text())
    except (OSError, ValueError) as exc:
        raise SlidescanError(f"{report_path(heatmap)}: unreadable report ({exc})") from None


def _ignore_missing(function: object, path: str, exc_info: tuple) -> None:
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


@dataclass(frozen=True)
class SlideOutputs:
    """Where one slide's results go: ``X.zarr`` heatmap, ``X.json`` report, ``X.geojson``
    lesion annotations, optional overlay."""

    heatmap: Path
    overlay: Path | None = None

    @classmethod
    def in_folder(
        cls, slide: Path, out_dir: Path, overlay_dir: Path | None = None, *, key: str | None = None
    ) -> SlideOutputs:
        """The outputs of ``slide`` in a directory run: ``OUT/<stem>.zarr`` (and ``<stem>.png``).

        ``key``: the slide's path relative to the folder scanned (a recursive run), whose
        sub-folders the outputs mirror: ``cases/P001/node_1.svs`` → ``OUT/P001/node_1.zarr``.
        """
        rel = PurePosixPath(key if key is not None else slide.name)
        name = f"{Path(rel.name).stem}"
        overlay = (
            None if overlay_dir is None else overlay_dir.joinpath(*rel.parent.parts, f"{name}.png")
        )
        return cls(out_dir.joinpath(*rel.parent.parts, f"{name}.zarr"), overlay)

    @property
    def report(self) -> Path:
        """The JSON report beside the heatmap."""
        return report_path(self.heatmap)

    @property
    def geojson(self) -> Path:
        """The QuPath GeoJSON beside the heatmap."""
        return geojson_path(self.heatmap)

    @property
    def lock(self) -> Path:
        """The lock file a writer holds: ``.x.zarr.lock``."""
        return self.heatmap.with_name(f".{self.heatmap.name}.lock")

    def is_complete(self) -> bool:
        """True when a scan finished here."""
        return is_complete(self.heatmap)

    def matching_report(self, expected: str, key: str = FINGERPRINT_KEY) -> dict[str, Any] | None:
        """The report of a complete result made with fingerprint ``expected``, else None
        (``key="heatmap_fingerprint"``: whose heatmap was made so)."""
        if not self.is_complete():
            return None
        try:
            report = read_report(self.heatmap)
        except SlidescanError:
            return None
        return report if expected and report.get(key) == expected else None

    def matches(self, expected: str) -> bool:
        """True when a complete result here was made with fingerprint ``expected``."""
        return self.matching_report(expected) is not None

    def interrupted(self) -> bool:
        """A slidescan heatmap without its report: a scan killed between the renames."""
        if not self.heatmap.is_dir() or self.report.exists():
            return False
        try:
            read_heatmap(self.heatmap)
        except SlidescanError:
            return False  # not ours: never delete it without overwrite
        return True

    def foreign(self) -> bool:
        """Something that is not a slidescan result (or a report without its heatmap) sits where
        this slide's outputs go: never replaced without being asked to."""
        if self.heatmap.exists():
            return not self.is_complete() and not self.interrupted()
        return self.report.exists()

    def overlay_missing(self) -> bool:
        """An overlay is wanted but not on disk."""
        return self.overlay is not None and not self.overlay.is_file()

    def extras_missing(self) -> bool:
        """A file written beside a complete result is gone (or predates slidescan writing it)."""
        return self.overlay_missing() or not self.geojson.is_file()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the slide's lock for the block; raise :class:`OutputBusy` if a live run has it."""
        ensure_output_folder(self.heatmap.parent)
        _acquire(self.lock, self.heatmap.name)
        try:
            yield
        finally:
            self.lock.unlink(missing_ok=True)

    @contextlib.contextmanager
    def staged(self) -> Iterator[Staging]:
        """Unique temporary names for this writer; removed if the block fails."""
        staging = Staging(self, token=writer_token())
        staging.clear_abandoned()
        if staging.overlay is not None:
            # Fail before the scan, not after it: an unwritable overlay folder would otherwise
            # throw away a finished result.
            try:
                staging.overlay.parent.mkdir(parents=True, exist_ok=True)
                staging.overlay.touch()
            except OSError as exc:
                staging.discard()
                raise SlidescanError(
                    f"{self.overlay}: cannot write the overlay there ({_os_reason(exc)})"
                ) from exc
        try:
            yield staging
        except BaseException:
            staging.discard()
            raise


@dataclass(frozen=True)
class Staging:
    """The temporary names one writer fills before :meth:`commit` puts them in place."""

    outputs: SlideOutputs
    token: str

    def _tmp(self, path: Path, suffix: str = "") -> Path:
        return partial_path(path, self.token, suffix)

    @property
    def heatmap(self) -> Path:
        """Where the zarr heatmap is written."""
        return self._tmp(self.outputs.heatmap)

    @property
    def report(self) -> Path:
        """Where the JSON report is written."""
        return self._tmp(self.outputs.report)

    @property
    def geojson(self) -> Path:
        """Where the QuPath GeoJSON is written."""
        return self._tmp(self.outputs.geojson)

    @property
    def overlay(self) -> Path | None:
        """Where the overlay PNG is rendered (keeps its suffix: image writers go by it)."""
        path = self.outputs.overlay
        return None if path is None else self._tmp(path, path.suffix)

    def clear_abandoned(self) -> None:
        """Delete temporaries of writers that died (the caller holds the lock, so none is live)."""
        out = self.outputs
        for final in (out.heatmap, out.report, out.geojson, out.overlay):
            if final is None or not final.parent.is_dir():
                continue
            # Also the fixed names (".x.zarr.partial") that slidescan 0.1 wrote.
            for leftover in final.parent.glob(f".{final.name}.*partial*"):
                remove_path(leftover)

    def discard(self) -> None:
        """Remove whatever this writer staged (best effort: it runs while another error, or a
        Ctrl-C, is on its way out, which must not be replaced by a clean-up failure)."""
        for tmp in (self.heatmap, self.report, self.geojson, self.overlay):
            if tmp is not None:
                try:
                    remove_path(tmp)
                except OSError as exc:
                    _log.warning("could not remove %s: %s", tmp, exc)

    def commit(self) -> None:
        """Move the staged files into place; the report goes last and marks completion.

        The old report goes first, so that no moment shows an old "complete" marker beside a
        new heatmap; a Ctrl-C meanwhile takes effect once everything is in place.
        """
        with _ctrl_c_deferred():
            self._move_into_place()

    def _move_into_place(self) -> None:
        out = self.outputs
        try:
            remove_path(out.report)
            if self.overlay is not None and self.overlay.exists():
                os.replace(self.overlay, out.overlay)  # type: ignore[arg-type]
            os.replace(self.geojson, out.geojson)
            remove_path(out.heatmap)
            os.replace(self.heatmap, out.heatmap)
            os.replace(self.report, out.report)
        except OSError as exc:
            self.discard()
            raise SlidescanError(
                f"{out.heatmap}: cannot write the result ({_os_reason(exc)})"
            ) from exc


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold back Ctrl-C for the block: a SIGINT meanwhile is noted and delivered right after it,
    so it never leaves half of a result under its final names.

    Python runs signal handlers in the main thread whichever thread the signal hit, so swapping
    the handler works where masking the signal would not (zarr, torch and ONNX keep threads).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if not caught or previous == signal.SIG_IGN:
        return
    if callable(previous):
        previous(signal.SIGINT, None)
    else:  # SIG_DFL, or a handler installed outside Python: Ctrl-C's usual meaning
        raise KeyboardInterrupt


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def ensure_output_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) and prove it writable, or raise one clear error:
    a batch checks this before it scans anything."""
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise SlidescanError(f"{folder}: cannot write there ({parent} is a file, not a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".slidescan-write-test-{writer_token()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise SlidescanError(f"{folder}: cannot write there ({_os_reason(exc)})") from None


def _lock_record() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})


def _acquire(lock: Path, name: str) -> None:
    for _ in range(3):  # a stale lock removed under us by another run: try again
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _read_text(lock)
            holder = _live_holder(lock, seen)
            if holder is not None:
                raise OutputBusy(
                    f"{name}: being written by another run ({holder}); left to it"
                ) from None
            if _read_text(lock) == seen:  # not taken over by a third run meanwhile
                lock.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise SlidescanError(f"{lock.parent}: cannot write there ({_os_reason(exc)})") from exc
        with os.fdopen(fd, "w") as fh:
            fh.write(_lock_record())
        return
    raise OutputBusy(f"{name}: lock keeps changing hands; left to the other run")


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _live_holder(lock: Path, text: str | None) -> str | None:
    """'host pid N' of a live lock holder (lock content ``text``); None when the lock is stale."""
    if text is None and not lock.exists():
        return None
    try:
        record = json.loads(text or "")
        host, pid, started = str(record["host"]), int(record["pid"]), float(record["started"])
    except (ValueError, KeyError, TypeError):
        # Being written this very moment, or damaged: judge by age alone.
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return None
        return None if age > STALE_LOCK_SECONDS else "unknown holder"
    if time.time() - started > STALE_LOCK_SECONDS:
        return None
    if host == socket.gethostname() and not _pid_alive(pid):
        return None
    return f"{host} pid {pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:  # EPERM: alive, someone else's
        return exc.errno == errno.EPERM
    return True
