"""Batch scans on a Dask distributed cluster: one task per slide, each worker its own model.

The scheduler can be anything Dask connects to: ``tcp://host:8786``, a scheduler file written by
``dask-jobqueue``/``dask scheduler --scheduler-file`` on HPC (a path ending in ``.json``), or
``local:N`` for a LocalCluster of N worker processes on this machine. Workers must see the
slides and the output folder at the same paths (a shared filesystem, or object storage mounted
alike). Outputs, summary.csv and resumability are exactly those of a local run.

GPUs: run one worker per GPU with each worker seeing only its own (``dask-cuda``'s
LocalCUDACluster or ``dask-cuda-worker`` set CUDA_VISIBLE_DEVICES so), and the default
``--device auto`` then uses that GPU. Dask worker processes are daemonic and may not start
DataLoader workers, so tiles are read in the task's own process there: give workers one thread
each and let the number of workers provide the parallelism.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from slidescan.batch.slide_jobs import duplicate_outputs, failed, process_slide, slide_key
from slidescan.batch.summary import SummaryBook
from slidescan.errors import SlidescanError, one_line, redact_path
from slidescan.io.outputs import SlideOutputs
from slidescan.progress import progress
from slidescan.report.outcome import SlideOutcome
from slidescan.scan.scan_result import ScanOptions
from slidescan.scan.scanner import Scanner

if TYPE_CHECKING:
    from distributed import Client

_SCANNERS: dict[tuple[str | None, ScanOptions], Scanner] = {}
_SCANNERS_LOCK = threading.Lock()


@contextlib.contextmanager
def dask_client(scheduler: str) -> Iterator[Client]:
    """A Dask client for ``scheduler`` (address, scheduler-file path, or ``local:N``), closed
    (with its LocalCluster, if it started one) on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SlidescanError(
            "a Dask scheduler needs Dask distributed: pip install 'slidescan[cluster]'",
            param="scheduler",
        ) from None
    cluster = None
    try:
        if scheduler.startswith("local:"):
            cluster = LocalCluster(
                n_workers=int(scheduler.split(":", 1)[1]), threads_per_worker=1, processes=True,
                dashboard_address=None,
            )  # fmt: skip
            client = Client(cluster)
        elif scheduler.endswith(".json"):
            client = Client(scheduler_file=scheduler)
        else:
            client = Client(scheduler)
    except (OSError, ValueError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise SlidescanError(f"cannot connect to Dask scheduler {scheduler!r}: {exc}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _worker_scanner(weights: str | None, options: ScanOptions) -> Scanner:
    # One model per worker process, loaded by its first task and reused by the rest; the lock
    # keeps tasks on a multi-threaded worker from building it twice.
    key = (weights, options)
    with _SCANNERS_LOCK:
        if key not in _SCANNERS:
            from slidescan.engine.weights import load_weights

            _SCANNERS[key] = Scanner(load_weights(Path(weights) if weights else None), options)
        return _SCANNERS[key]


def scan_task(
    slide: str,
    out_dir: str,
    weights: str | None,
    options: ScanOptions,
    overlay_dir: str | None,
    key: str | None = None,
) -> SlideOutcome:
    """What one Dask task does: scan one slide on the worker it landed on."""
    if multiprocessing.current_process().daemon or options.workers is None:
        # Daemonic worker processes may not start DataLoader workers, and by default the
        # cluster is the parallelism here (not one DataLoader worker per core per task).
        options = dataclasses.replace(options, workers=0)
    options = dataclasses.replace(options, progress=False)
    scanner = _worker_scanner(weights, options)
    outputs = SlideOutputs.in_folder(
        Path(slide), Path(out_dir), Path(overlay_dir) if overlay_dir else None, key=key
    )
    return process_slide(Path(slide), outputs, scanner, overwrite=options.overwrite, key=key)


def run_batch_on_cluster(
    slides: list[Path],
    out_dir: Path,
    client: Client,
    *,
    weights: Path | None,
    options: ScanOptions,
    overlay_dir: Path | None = None,
    on_outcome: Callable[[SlideOutcome], None] | None = None,
    root: Path | None = None,
) -> list[SlideOutcome]:
    """Like :func:`slidescan.batch.slide_jobs.run_batch`, with one Dask task per slide.

    Tasks of finished slides only compare fingerprints: whether a result matches depends on the
    engine the worker's device gets, which only the worker knows."""
    from distributed import as_completed

    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[Path, SlideOutcome] = {}
    todo = []
    duplicates = duplicate_outputs(slides, out_dir, root)
    with SummaryBook(out_dir) as book:

        def record(slide: Path, outcome: SlideOutcome) -> None:
            outcomes[slide] = outcome
            book.record(outcome)
            if on_outcome:
                on_outcome(outcome)

        for slide in slides:
            if slide in duplicates:
                record(slide, failed(slide, duplicates[slide], slide_key(slide, root)))
            else:
                todo.append(slide)
        futures = {
            client.submit(
                scan_task, str(s.resolve()), str(out_dir.resolve()),
                str(weights.resolve()) if weights else None, options,
                str(overlay_dir.resolve()) if overlay_dir else None, slide_key(s, root),
                pure=False,
            ): s
            for s in todo
        }  # fmt: skip
        for future in progress(
            as_completed(futures), total=len(futures), desc="slides", unit="slide", leave=False
        ):
            slide = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # a worker died or the task could not run at all
                outcome = failed(
                    slide, f"task failed: {one_line(exc, path=slide)}", slide_key(slide, root)
                )
                outcome.detail = redact_path("".join(traceback.format_exception(exc)), slide)
            record(slide, outcome)
    return [outcomes[s] for s in slides]
