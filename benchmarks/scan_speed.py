"""Whole-slide scan speed and memory: the slidescan pipeline against a naive loop and its floors.

    python benchmarks/scan_speed.py [--sizes 15000 30000] [--workers 2] [--batch-size N] \
        [--threads N] [--weights W] [--baseline-weights OLD.pt] [--skip-naive] [--skip-dense] \
        [--repeat 1] [--work-dir DIR]

Slides are mosaics of real PCam tissue (``make_mosaic_slide.py``) at the model's resolution,
written once into ``--work-dir`` (default ``/tmp/slidescan-bench``) and reused; nothing is written
into the repository. Every variant runs in a fresh subprocess on the same tissue cells (one mask,
one stride-96 grid), so its peak RSS is its own:

- ``pipeline``: ``Scanner.scan`` (thumbnail mask, DataLoader workers that each read blocks of
  cells and score them with their own one-thread model on a CPU, zarr heatmap, slide call),
  timed from the call to its return;
- ``pipeline, model in main``: the same with the GPU layout on the CPU: workers only read and
  the main process runs the model (slidescan's CPU layout until 2026-11-28);
- ``naive``: one ``openslide.OpenSlide.read_region`` per tile at level 0, PIL → numpy → tensor,
  batches of ``--batch-size``, one model call per batch, no workers (mask not timed);
- ``read floor``: ``SlideTileDataset`` through a DataLoader with the same workers, no model;
  only tile counts are handed back;
- ``model floor``: the model alone (Normalizer + ``predict_probs``) on random uint8 batches for
  the same number of tiles, in one process with ``--threads`` threads; ``model floor, workers``:
  the same laid out as the CPU pipeline (one one-thread copy per worker). The ratios use the
  faster of the two;
- ``dense``: ``Scanner.scan(dense=True)``, the stride-32 heatmap;
- ``pipeline, baseline weights`` (with ``--baseline-weights``): ``pipeline`` with another model,
  in the same rounds, for a side-by-side time ratio when the shipped model changes.

Correctness checks: naive vs pipeline probabilities on the same cells, and the dense heatmap vs a
patch-by-patch ``stride=32`` scan of a ``--check-size`` slide (9× the tiles, so kept small).
Memory, per variant (Linux): the peak RSS of its main process (``VmHWM``; ``ru_maxrss`` would
be useless here, as Linux carries it across ``exec`` from the forking parent), and the peak of the
DataLoader workers' private memory summed over workers, sampled every 0.2 s (what a forked worker
shares with its parent is already in the parent's RSS); their sum bounds the footprint. Prints
Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slidescan import __version__
from slidescan.engine.cell_scoring import CellScorer
from slidescan.engine.device import default_scan_batch, select_device
from slidescan.engine.inference import Normalizer, make_predictor, predict_probs
from slidescan.engine.weights import LoadedModel, load_weights
from slidescan.io.heatmap import read_heatmap
from slidescan.io.slide import open_slide
from slidescan.scan.scan_result import ScanOptions
from slidescan.scan.scanner import Scanner
from slidescan.scan.slide_geometry import plan_grid
from slidescan.scan.slide_tiles import BlockBatches, SlideTileDataset
from slidescan.scan.tiling import TileGrid

BLOCK = 8  # cells per block side: Scanner's default for stride-96 scans
DENSE_STRIDE = 32
ORDER = (
    "pipeline", "pipeline, baseline weights", "pipeline, model in main", "naive", "read floor",
    "model floor", "model floor, workers", "tissue mask", "dense",
)  # fmt: skip
SAMPLE_S = 0.2  # memory sampling interval
NAIVE_BATCH = 256  # batch of the naive loop and the one-process model floor (unless --batch-size)


@dataclass
class Job:
    """One variant run, passed to the subprocess as JSON."""

    variant: str
    slide: str
    out: str  # heatmap (.zarr) or probabilities (.npy) written by the variant
    workers: int
    batch_size: int | None  # None: the scan's default for the device (scan_batch)
    threads: int
    device: str
    weights: str | None
    baseline_weights: str | None = None
    cells: str = ""  # .npy of the (row, col) tissue cells of the stride-96 grid
    grid: dict[str, Any] | None = None  # that grid, as TileGrid.to_attrs()


# ---------------------------------------------------------------- variants (in the subprocess)


def tissue_cells(
    slide_path: Path, loaded: LoadedModel, min_tissue: float
) -> tuple[TileGrid, np.ndarray]:
    """The stride-96 grid and its tissue cells, exactly as ``Scanner.scan`` chooses them."""
    with open_slide(slide_path) as slide:
        grid, tissue = plan_grid(slide, loaded.card, None, min_tissue)
    return grid, np.argwhere(tissue)


def _model(job: Job) -> tuple[LoadedModel, torch.nn.Module, Normalizer]:
    loaded = load_weights(Path(job.weights) if job.weights else None)
    predictor = make_predictor(loaded, job.device)
    return loaded, predictor.model, predictor.normalizer


def _scan(job: Job, slide: str, out: str, **options: Any) -> tuple[int, float]:
    """(tiles, seconds) of one ``Scanner.scan``; the Scanner is built outside the timing."""
    loaded = load_weights(Path(job.weights) if job.weights else None)
    opts = ScanOptions(
        workers=job.workers, batch_size=job.batch_size, device=job.device,
        overwrite=True, progress=False, **options,
    )  # fmt: skip
    scanner = Scanner(loaded, opts)
    start = time.perf_counter()
    result = scanner.scan(Path(slide), Path(out))
    return result.tiles, time.perf_counter() - start


def run_pipeline(job: Job) -> dict[str, Any]:
    """The full stride-96 scan."""
    tiles, seconds = _scan(job, job.slide, job.out)
    return {"tiles": tiles, "seconds": seconds}


def run_pipeline_baseline(job: Job) -> dict[str, Any]:
    """The full stride-96 scan with the baseline weights."""
    tiles, seconds = _scan(
        Job(**{**asdict(job), "weights": job.baseline_weights}), job.slide, job.out
    )
    return {"tiles": tiles, "seconds": seconds}


def run_pipeline_main_model(job: Job) -> dict[str, Any]:
    """The full stride-96 scan with the model in the main process (the GPU layout)."""
    tiles, seconds = _scan(job, job.slide, job.out, runner="main")
    return {"tiles": tiles, "seconds": seconds}


def run_dense(job: Job) -> dict[str, Any]:
    """The full dense (stride-32) scan."""
    tiles, seconds = _scan(job, job.slide, job.out, dense=True)
    return {"tiles": tiles, "seconds": seconds}


def run_naive(job: Job) -> dict[str, Any]:
    """The way most scripts scan: one OpenSlide read per tile, per-tile float conversion and
    normalisation, the PyTorch model called eagerly (NCHW, ``no_grad``) per batch, no workers.
    Saves the probabilities (checked against the pipeline's)."""
    import openslide

    loaded = load_weights(Path(job.weights) if job.weights else None)
    model = loaded.model.eval()
    mean = torch.tensor(loaded.card.mean).view(3, 1, 1)
    std = torch.tensor(loaded.card.std).view(3, 1, 1)
    grid = TileGrid.from_attrs(job.grid or {})
    cells = np.load(job.cells)
    p = grid.patch_size
    probs = np.empty(len(cells), np.float32)
    start = time.perf_counter()
    osr = openslide.OpenSlide(job.slide)
    batch_size = job.batch_size or NAIVE_BATCH
    for i in range(0, len(cells), batch_size):
        tiles = []
        for r, c in cells[i : i + batch_size]:
            region = osr.read_region(grid.cell_to_level0(int(r), int(c)), 0, (p, p))
            x = torch.from_numpy(np.asarray(region.convert("RGB"))).permute(2, 0, 1).float()
            tiles.append((x / 255.0 - mean) / std)
        with torch.no_grad():
            probs[i : i + len(tiles)] = torch.sigmoid(model(torch.stack(tiles))).numpy()
    osr.close()
    seconds = time.perf_counter() - start
    np.save(job.out, probs)
    return {"tiles": len(cells), "seconds": seconds}


def scan_batch(job: Job) -> int:
    """The batch size ``Scanner`` uses for this job."""
    return job.batch_size or default_scan_batch(select_device(job.device))


def _count(items: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(len(patches) for patches, _ in items)


def run_read_floor(job: Job) -> dict[str, Any]:
    """Read and decode every tile in the pipeline's dataset and workers; no model, and only tile
    counts cross to the main process."""
    grid = TileGrid.from_attrs(job.grid or {})
    cells = np.load(job.cells)
    start = time.perf_counter()
    dataset = SlideTileDataset(Path(job.slide), grid, cells, block=BLOCK)
    loader = DataLoader(
        dataset,
        batch_sampler=BlockBatches(dataset, scan_batch(job)),
        collate_fn=_count,
        num_workers=job.workers,
        prefetch_factor=4 if job.workers else None,
    )
    tiles = sum(loader)
    return {"tiles": tiles, "seconds": time.perf_counter() - start}


class RandomBatches(Dataset):
    """``n`` tiles as random uint8 batches (one seeded batch, sliced), with dummy cells."""

    def __init__(self, n: int, batch_size: int, size: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batch = torch.randint(
            0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen
        )
        self.sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.sizes[i]
        return self.batch[:k], torch.zeros(k, 2, dtype=torch.int64)


def run_model_floor(job: Job) -> dict[str, Any]:
    """The model alone in one process (``--threads`` threads) on random uint8 batches, as many
    tiles as the slide has."""
    loaded, model, normalizer = _model(job)
    batches = RandomBatches(
        len(np.load(job.cells)), job.batch_size or NAIVE_BATCH, loaded.card.input_size
    )
    start = time.perf_counter()
    for i in range(len(batches)):
        predict_probs(model, batches[i][0], normalizer)
    return {"tiles": sum(batches.sizes), "seconds": time.perf_counter() - start}


def run_model_floor_workers(job: Job) -> dict[str, Any]:
    """The model alone laid out as the CPU pipeline runs it: one single-threaded copy in each
    of ``--workers`` processes, on random uint8 batches; only probabilities come back."""
    loaded = load_weights(Path(job.weights) if job.weights else None)
    scorer = CellScorer(loaded, make_predictor(loaded, job.device))
    n = len(np.load(job.cells))
    start = time.perf_counter()
    loader = DataLoader(
        RandomBatches(n, scan_batch(job), loaded.card.input_size),
        batch_size=None,
        collate_fn=scorer.collate,
        num_workers=job.workers,
        prefetch_factor=4 if job.workers else None,
    )
    tiles = sum(len(probs) for probs, _ in loader)
    return {"tiles": tiles, "seconds": time.perf_counter() - start}


def run_tissue_mask(job: Job) -> dict[str, Any]:
    """The thumbnail tissue mask and tissue cells alone (a fixed cost inside ``pipeline``)."""
    loaded = load_weights(Path(job.weights) if job.weights else None)
    start = time.perf_counter()
    _, cells = tissue_cells(Path(job.slide), loaded, ScanOptions().min_tissue)
    return {"tiles": len(cells), "seconds": time.perf_counter() - start}


def run_dense_check(job: Job) -> dict[str, Any]:
    """Dense heatmap vs a patch-by-patch stride-32 scan of the same slide."""
    out = Path(job.out)
    _, dense_s = _scan(job, job.slide, str(out / "dense.zarr"), dense=True)
    _, patch_s = _scan(job, job.slide, str(out / "stride32.zarr"), stride=DENSE_STRIDE)
    dense, tissue_d, _ = read_heatmap(out / "dense.zarr")
    patch, tissue_p, _ = read_heatmap(out / "stride32.zarr")
    both = np.isfinite(dense) & np.isfinite(patch)
    diff = np.abs(dense[both] - patch[both])
    return {
        "cells": int(both.sum()),
        "same_tissue": bool(np.array_equal(tissue_d, tissue_p)),
        "max_abs_diff": float(diff.max()) if diff.size else float("nan"),
        "dense_seconds": dense_s,
        "patch_seconds": patch_s,
    }


VARIANTS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "pipeline": run_pipeline,
    "pipeline, baseline weights": run_pipeline_baseline,
    "pipeline, model in main": run_pipeline_main_model,
    "naive": run_naive,
    "read floor": run_read_floor,
    "model floor": run_model_floor,
    "model floor, workers": run_model_floor_workers,
    "tissue mask": run_tissue_mask,
    "dense": run_dense,
    "dense check": run_dense_check,
}


def _proc_kb(pid: int | str, file: str, key: str) -> int:
    """A ``key:  N kB`` line of ``/proc/<pid>/<file>`` (0 if unreadable, e.g. not Linux)."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[str]:
    """Pids of the direct children of ``pid`` (from ``/proc/*/stat``)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append(entry)
    return found


class WorkerMemorySampler(threading.Thread):
    """Peak (kB) of the private memory of this process's children, summed, sampled."""

    def __init__(self, interval: float = SAMPLE_S) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_kb = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            total = 0
            for child in _children(os.getpid()):
                total += _proc_kb(child, "smaps_rollup", "Private_Clean:")
                total += _proc_kb(child, "smaps_rollup", "Private_Dirty:")
            self.peak_kb = max(self.peak_kb, total)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kb


def child_main(job_json: str) -> None:
    """Run one variant and print its result (plus peak memory) as one JSON line."""
    job = Job(**json.loads(job_json))
    torch.set_num_threads(job.threads)
    sampler = WorkerMemorySampler()
    sampler.start()
    result = VARIANTS[job.variant](job)
    result["workers_mb"] = sampler.stop() / 1024
    result["rss_main_mb"] = _proc_kb("self", "status", "VmHWM:") / 1024
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- orchestration (parent)


def run_variant(job: Job) -> dict[str, Any]:
    """Run ``job`` in a fresh Python process; its last stdout line is the result."""
    print(f"  {job.variant} on {Path(job.slide).name} ...", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(asdict(job))],
        stdout=subprocess.PIPE, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"variant {job.variant!r} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with the highest peak memory of all runs."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    for key in ("rss_main_mb", "workers_mb"):
        best[key] = max(r[key] for r in runs)
    best["runs"] = len(runs)
    return best


def warm_page_cache(path: Path) -> None:
    """Read the file once so no variant pays for the first read from disk."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def machine_line(threads: int, device: str, loaded: LoadedModel) -> str:
    """CPU model and count, torch version/threads/device, slidescan version, model and weights."""
    model_name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {model_name}; {os.cpu_count()} logical CPUs ({usable} usable); "
        f"torch {torch.__version__}, {threads} threads, device {select_device(device)}; "
        f"slidescan {__version__}; model {loaded.card.model} "
        f"({loaded.path.name if loaded.path else '?'}, sha256 {loaded.sha256[:12]})"
    )


def _speed(r: dict[str, Any]) -> float:
    return r["tiles"] / r["seconds"]


def _mb(value: float) -> str:
    return f"{value:,.0f}" if value > 0 else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[15_000, 30_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the scan's (64 on CPU), 256 naive"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--weights", type=Path, default=None, help="default: shipped model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-naive", action="store_true", help="skip the slow naive loop")
    parser.add_argument("--skip-dense", action="store_true", help="skip the dense variants")
    parser.add_argument(
        "--baseline-weights", type=Path, default=None, help="also scan with this model"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of all variants; each keeps its fastest"
    )
    parser.add_argument("--check-size", type=int, default=4000, help="slide for the dense check")
    parser.add_argument("--seed", type=int, default=0, help="mosaic slide seed")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/slidescan-bench"))
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one variant
    args = parser.parse_args()
    if args.job:
        child_main(args.job)
        return

    sys.dont_write_bytecode = True  # the import below must leave no __pycache__ in the repo
    from make_mosaic_slide import make_mosaic_slide, mosaic_name

    work = args.work_dir.resolve()
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_weights(args.weights)
    common: dict[str, Any] = {
        "workers": args.workers,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": args.device,
        "weights": str(args.weights) if args.weights else None,
        "baseline_weights": str(args.baseline_weights) if args.baseline_weights else None,
    }
    skipped = {
        "naive": args.skip_naive,
        "dense": args.skip_dense,
        "pipeline, baseline weights": args.baseline_weights is None,
    }
    variants = [v for v in ORDER if not skipped.get(v, False)]
    results: dict[int, dict[str, dict[str, Any]]] = {}
    checks: dict[int, str] = {}
    for size in args.sizes:
        print(f"slide {size} px:", file=sys.stderr, flush=True)
        name = mosaic_name(size, mpp=loaded.card.mpp, seed=args.seed)
        slide = make_mosaic_slide(work / name, size, mpp=loaded.card.mpp, seed=args.seed)
        warm_page_cache(slide)
        grid, cells = tissue_cells(slide, loaded, ScanOptions().min_tissue)
        np.save(out / f"{slide.stem}-cells.npy", cells)
        paths = {
            v: out / f"{slide.stem}-{v.replace(' ', '-')}{'.npy' if v == 'naive' else '.zarr'}"
            for v in variants
        }
        jobs = {
            v: Job(
                variant=v,
                slide=str(slide),
                out=str(paths[v]),
                cells=str(out / f"{slide.stem}-cells.npy"),
                grid=grid.to_attrs(),
                **common,
            )
            for v in variants
        }
        # Whole rounds of all variants, so that a slow spell of a shared machine hits them alike.
        rounds = [{v: run_variant(job) for v, job in jobs.items()} for _ in range(args.repeat)]
        results[size] = {v: best_of([r[v] for r in rounds]) for v in variants}
        checks[size] = compare_naive(paths["pipeline"], paths.get("naive"), cells)

    if args.skip_dense:
        report(args, loaded, results, checks, None)
        return
    print(f"slide {args.check_size} px: dense check", file=sys.stderr, flush=True)
    name = mosaic_name(args.check_size, mpp=loaded.card.mpp, seed=args.seed)
    check_slide = make_mosaic_slide(
        work / name, args.check_size, mpp=loaded.card.mpp, seed=args.seed
    )
    check_out = out / f"{check_slide.stem}-dense-check"
    check_out.mkdir(exist_ok=True)
    dense_check = run_variant(
        Job(variant="dense check", slide=str(check_slide), out=str(check_out), **common)
    )
    report(args, loaded, results, checks, dense_check)


def compare_naive(heatmap: Path, naive: Path | None, cells: np.ndarray) -> str:
    """Pipeline vs naive probabilities on the same cells (and that the cells are the same)."""
    prob, tissue, _ = read_heatmap(heatmap)
    note = "" if np.array_equal(np.argwhere(tissue), cells) else " (PIPELINE CELLS DIFFER!)"
    if naive is None or not len(cells):
        return note.strip()
    diff = np.abs(prob[cells[:, 0], cells[:, 1]] - np.load(naive))
    engine = str(read_heatmap(heatmap)[2].get("engine", "?"))
    return (
        f"pipeline ({engine}) vs naive (eager float32): |Δp| mean {diff.mean():.1e}, max "
        f"{diff.max():.2e} over {len(cells):,} cells{note}"
    )


def report(
    args: argparse.Namespace,
    loaded: LoadedModel,
    results: dict[int, dict[str, dict[str, Any]]],
    checks: dict[int, str],
    dense_check: dict[str, Any] | None,
) -> None:
    """Print the Markdown tables."""
    print(machine_line(args.threads, args.device, loaded))
    print(
        f"settings: workers {args.workers}, batch {args.batch_size or 'default'}, "
        f"best of {args.repeat} round(s), stride 96 "
        f"(dense: {DENSE_STRIDE}), mosaic slides of real PCam tissue at {loaded.card.mpp} µm/px, "
        f"~50% tissue, JPEG q90 256-px tiles\n"
    )
    print(
        "| slide | variant | tiles | seconds | tiles/s | peak RSS main (MB) | peak workers (MB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for size, rows in results.items():
        for variant, r in rows.items():
            speed = "—" if variant == "tissue mask" else f"{_speed(r):,.0f}"
            print(
                f"| {size:,} px | {variant} | {r['tiles']:,} | {r['seconds']:.2f} | {speed} "
                f"| {_mb(r['rss_main_mb'])} | {_mb(r['workers_mb'])} |"
            )
    print(
        "\npipeline = whole Scanner.scan (tissue mask, reads, model, zarr, call) with the CPU "
        "layout: each worker reads and runs its own one-thread model; 'model in main' = the GPU "
        "layout (workers read, the main process scores); naive excludes the tissue mask; read "
        "floor hands only counts back; model floor = the faster of its two layouts; dense: "
        f"tiles = stride-{DENSE_STRIDE} heatmap cells; peak workers = DataLoader workers' "
        "private memory, summed (sampled every 0.2 s)."
    )
    print(
        "\n| slide | pipeline ÷ naive speed | model in main ÷ pipeline time "
        "| pipeline ÷ max(read, model floor) | (read + model floor) ÷ max | "
        "(pipeline − mask) ÷ max | dense ÷ pipeline time | pipeline ÷ baseline weights time |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, rows in results.items():
        pipe = rows["pipeline"]
        vs_naive = f"{_speed(pipe) / _speed(rows['naive']):.2f}×" if "naive" in rows else "—"
        main_model = rows["pipeline, model in main"]["seconds"] / pipe["seconds"]
        read = rows["read floor"]["seconds"]
        model = min(rows[v]["seconds"] for v in ("model floor", "model floor, workers"))
        floor = max(read, model)
        no_mask = pipe["seconds"] - rows["tissue mask"]["seconds"]
        dense = f"{rows['dense']['seconds'] / pipe['seconds']:.2f}×" if "dense" in rows else "—"
        base = rows.get("pipeline, baseline weights")
        vs_base = f"{pipe['seconds'] / base['seconds']:.2f}×" if base else "—"
        print(
            f"| {size:,} px | {vs_naive} | {main_model:.2f}× | {pipe['seconds'] / floor:.2f}× "
            f"| {(read + model) / floor:.2f}× | {no_mask / floor:.2f}× | {dense} | {vs_base} |"
        )
    memory = "; ".join(
        f"{size:,} px: {_mb(r['pipeline']['rss_main_mb'])} MB main RSS"
        + (f" + {_mb(r['pipeline']['workers_mb'])} MB workers" if args.workers else "")
        for size, r in results.items()
    )
    print(f"\npipeline peak memory: {memory}")
    for size, note in checks.items():
        if note:
            print(f"check {size:,} px: {note}")
    if args.baseline_weights is not None:
        base_model = load_weights(args.baseline_weights)
        print(f"baseline weights: {base_model.card.model} (sha256 {base_model.sha256[:12]})")
    d = dense_check
    if d is None:
        return
    print(
        f"check {args.check_size:,} px: dense vs patch-by-patch stride-32 scan: max |Δp| = "
        f"{d['max_abs_diff']:.2e} over {d['cells']:,} cells"
        f"{'' if d['same_tissue'] else ' (TISSUE DIFFERS!)'}; "
        f"{d['dense_seconds']:.2f} s dense vs {d['patch_seconds']:.2f} s patchwise "
        f"({d['patch_seconds'] / d['dense_seconds']:.1f}× faster)"
    )


if __name__ == "__main__":
    main()
