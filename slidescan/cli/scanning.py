"""`slidescan run` and `demo`: scanning slides."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from slidescan.cli.app import app, quiet, user_errors
from slidescan.cli.options import BackendOpt, DeviceOpt, StainNormOpt, WeightsOpt
from slidescan.errors import SlidescanError
from slidescan.vocabulary import Backend, Reader, Sensitivity, SlideStatus


@app.command(rich_help_panel="Scan slides")
@user_errors
def run(
    input: Annotated[
        Path,
        typer.Argument(
            help="A slide (any OpenSlide format: SVS, NDPI, MRXS, tiled TIFF…; or a PNG/JPEG/TIFF "
            "image), a directory of slides, or a slide list: a .txt file with one path per line "
            "or a .csv with a slide (or path) column, paths relative to the list.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="Outputs",
            help="Heatmap X.zarr for one slide (default: <slide>.zarr); for a directory, the "
            "output folder (default: slidescan-results/) with <slide>.zarr, <slide>.json and "
            "summary.csv. Missing parent folders are created.",
            show_default=False,
        ),
    ] = None,
    weights: WeightsOpt = None,
    mpp: Annotated[
        float | None,
        typer.Option(
            rich_help_panel="Scale",
            help="Level-0 microns per pixel for every slide, overriding their metadata "
            "(0.25 ≈ 40×, 0.5 ≈ 20×).",
            show_default=False,
        ),
    ] = None,
    default_mpp: Annotated[
        float | None,
        typer.Option(
            rich_help_panel="Scale",
            help="Microns per pixel for slides whose metadata has none; the others keep theirs.",
            show_default=False,
        ),
    ] = None,
    any_scale: Annotated[
        bool,
        typer.Option(
            "--any-scale",
            rich_help_panel="Scale",
            help="Scan even when the slide's µm/px makes a model patch cover fewer than 24 slide "
            "pixels (by default refused before scanning: usually a wrong --mpp).",
        ),
    ] = False,
    full_paths: Annotated[
        bool,
        typer.Option(
            "--full-paths",
            rich_help_panel="Outputs",
            help="Record each slide's absolute path in its outputs (default: the file name only; "
            "paths often carry patient or study identifiers).",
        ),
    ] = False,
    stride: Annotated[
        int | None,
        typer.Option(
            rich_help_panel="Model and call",
            min=8,
            help="Grid step in model pixels (default: the patch size, 96 — non-overlapping "
            "tiles, each tissue pixel seen once; smaller strides cost (96/stride)² more; "
            "--dense gives the stride-32 map).",
            show_default=False,
        ),
    ] = None,
    min_tissue: Annotated[
        float,
        typer.Option(
            rich_help_panel="Model and call",
            min=0.0,
            max=1.0,
            help="Tissue fraction a cell needs to be scanned.",
        ),
    ] = 0.25,
    threshold: Annotated[
        float | None,
        typer.Option(
            rich_help_panel="Model and call",
            min=0.0,
            max=1.0,
            help="Seed threshold of a lesion: the probability one of its tiles must reach "
            "(default: the model's own, calibrated so that about 1% of simulated normal slides "
            "of 40,000 tissue tiles are called positive; replaces --sensitivity's, so give one "
            "of the two). A lesion extends over neighbouring tiles at the model's extent "
            "threshold (or this value, if lower).",
            show_default=False,
        ),
    ] = None,
    sensitivity: Annotated[
        Sensitivity,
        typer.Option(
            rich_help_panel="Model and call",
            help="Operating point of the lesion call, from the model card: standard (few "
            "false-positive slides) or high (a lower seed threshold: more small "
            "micrometastases found, more normal slides called positive; the shipped model's "
            "figures for both are in the README). Recorded in each report; a change is "
            "recalled from the stored heatmap.",
        ),
    ] = Sensitivity.standard,
    overlay: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="Outputs",
            help="Write the heatmap over a thumbnail: a PNG path for one slide, a folder for a "
            "directory of slides.",
            show_default=False,
        ),
    ] = None,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            rich_help_panel="Model and call",
            help="Average over the 8 flips/rotations (8× compute).",
        ),
    ] = False,
    stain_norm: StainNormOpt = None,
    dense: Annotated[
        bool,
        typer.Option(
            "--dense",
            rich_help_panel="Model and call",
            help="Stride-32 heatmap (the PCam label's centre-region resolution): finer lesion "
            "outlines and diameters. Fully convolutional models (pcamnet-s) run over blocks for "
            "about 2× the stride-96 time; others (the default pcamnet-v2) score overlapping "
            "tiles, 9× the work.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            rich_help_panel="Outputs",
            help="Scan again even results made with the same settings, and replace what is in "
            "the way.",
        ),
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            rich_help_panel="Speed and hardware",
            min=1,
            help="Patches per model batch. Default: 64 on a CPU (per worker), 256 on a GPU.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = Backend.auto,
    reader: Annotated[
        Reader,
        typer.Option(
            rich_help_panel="Speed and hardware",
            help="Slide decoder: auto (tiled TIFF slides such as Aperio .svs decoded directly "
            "with tifffile + imagecodecs, several times faster, once a check tile per level "
            "matches OpenSlide; every other format through OpenSlide) or openslide (always). "
            "At levels with a fractional downsample OpenSlide interpolates a sub-pixel offset "
            "that the direct reader rounds away.",
        ),
    ] = Reader.auto,
    workers: Annotated[
        int | None,
        typer.Option(
            rich_help_panel="Speed and hardware",
            min=0,
            help="DataLoader worker processes. Default: one per CPU core on a CPU, where each "
            "worker reads tiles and runs its own single-threaded copy of the model; up to 8 "
            "readers feeding a GPU. 0 reads and infers in the main process.",
            show_default=False,
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            rich_help_panel="Speed and hardware",
            help="Distribute a directory's slides over a Dask cluster, one task per slide: "
            "tcp://host:8786, a scheduler file (.json, e.g. from dask-jobqueue on SLURM), or "
            "local:N for N worker processes here. Workers need the same paths.",
            show_default=False,
        ),
    ] = None,
    recursive: Annotated[
        bool,
        typer.Option(
            "--recursive",
            "-r",
            rich_help_panel="Outputs",
            help="Also scan the slides in the directory's sub-folders (cases/P001/node_1.svs), "
            "the outputs mirroring them (OUT/P001/node_1.zarr); slides are known by their path "
            "relative to the directory, in summary.csv, the review page and --patients.",
        ),
    ] = False,
    patients: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="Outputs",
            help="CSV with columns slide,patient (one lymph node per slide): a directory run "
            "also writes OUT/patients.csv with each patient's pN stage (Camelyon17 rules).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Scan slides: tissue mask, tile at the model's resolution, heatmap (zarr) and slide call.

    One slide: slidescan run slide.svs --out heatmap.zarr

    A directory: slidescan run slides/ --out results/

    Reruns, of one slide or a directory, redo only what changed: a result made with the same
    settings is skipped; a changed --threshold or --sensitivity redoes only the call from the
    stored heatmap ("recalled", a fraction of a second); other changes rescan.

    A failing slide is recorded in summary.csv and the rest go on; exit code 1 if any failed.
    """
    from slidescan.batch.directory import SLIDE_LISTS, scan_directory
    from slidescan.batch.slide_jobs import scan_or_reuse
    from slidescan.engine.weights import load_weights
    from slidescan.io.outputs import SlideOutputs
    from slidescan.io.slide import dicom_file
    from slidescan.scan.scan_result import ScanOptions, describe
    from slidescan.scan.scanner import Scanner

    if not input.exists():
        raise SlidescanError(f"{input}: no such file or directory")
    options = ScanOptions(
        mpp=mpp, stride=stride, min_tissue=min_tissue, batch_size=batch_size, workers=workers,
        device=device, backend=backend.value, tta=tta, overwrite=overwrite, threshold=threshold,
        sensitivity=sensitivity.value,
        dense=dense, reader=reader.value, default_mpp=default_mpp, full_paths=full_paths,
        any_scale=any_scale, stain_norm=stain_norm.value if stain_norm else None,
    )  # fmt: skip
    is_list = input.is_file() and input.suffix.lower() in SLIDE_LISTS
    # A DICOM WSI is a folder: with --out X.zarr it is scanned as one slide.
    one_dicom = (
        input.is_dir()
        and dicom_file(input) is not None
        and out is not None
        and (out.suffix == ".zarr")
    )
    if patients is not None and not (input.is_dir() or is_list):
        raise SlidescanError("--patients stages the slides of a directory run: give a folder")
    if recursive and not input.is_dir():
        raise SlidescanError("--recursive scans a directory's sub-folders: give a folder")
    if (input.is_dir() and not one_dicom) or is_list:
        from slidescan.batch.directory import read_slide_list
        from slidescan.batch.patients import PATIENTS_NAME, read_patient_map

        patient_of = read_patient_map(patients) if patients is not None else None
        out_dir = out or Path("slidescan-results")
        outcomes = scan_directory(
            read_slide_list(input) if is_list else input, out_dir, weights=weights,
            options=options, overlay_dir=overlay, scheduler=scheduler, patients=patient_of,
            recursive=recursive, root=input.parent if is_list else None,
            on_outcome=functools.partial(_echo_outcome, remote=bool(scheduler), batch=True),
            on_result=_echo_result,
        )  # fmt: skip
        failed = sum(o.status == SlideStatus.failed for o in outcomes)
        counts = Counter(o.status for o in outcomes if o.status != SlideStatus.failed)
        kept = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        page = out_dir / "index.html"
        typer.echo(
            f"{len(outcomes) - failed}/{len(outcomes)} slides done ({kept}), {failed} failed; "
            f"summary: {out_dir / 'summary.csv'}"
            + (f"; review page: {page}" if page.is_file() else "")
            + (f"; patients: {out_dir / PATIENTS_NAME}" if patient_of is not None else "")
        )
        if failed:
            raise typer.Exit(1)
        return
    if scheduler:
        raise SlidescanError(
            "--scheduler distributes the slides of a directory; INPUT is one slide"
        )
    heatmap = out or Path(f"{input.stem}.zarr")
    if heatmap.suffix != ".zarr":
        raise SlidescanError(f"--out must end in .zarr for a single slide, got {heatmap}")
    scanner = Scanner(load_weights(weights), options)
    outcome = scan_or_reuse(
        input, SlideOutputs(heatmap, overlay), scanner, overwrite=overwrite,
        on_result=lambda result: typer.echo(describe(result)),
    )  # fmt: skip
    _echo_outcome(outcome, remote=False, batch=False)


def _echo_result(result: Any) -> None:
    """A directory run's line for a slide scanned here (none with --quiet)."""
    from slidescan.scan.scan_result import describe

    if not quiet():
        typer.echo(describe(result))


def _echo_outcome(outcome: Any, *, remote: bool, batch: bool) -> None:
    """The line for a slide that was not scanned here (or, on a cluster, was); in a directory
    run, skipped slides are only counted in the final summary."""
    if outcome.status == SlideStatus.failed:
        # The error names the slide already; the line does not repeat it.
        error = (
            outcome.error
            if outcome.error.startswith(outcome.slide)
            else (f"{outcome.slide}: {outcome.error}")
        )
        typer.echo(f"FAILED {error}", err=True)
    elif batch and (quiet() or outcome.status == SlideStatus.skipped):
        return
    elif outcome.status == SlideStatus.skipped:
        typer.echo(f"{outcome.slide}: already done with the same settings (--overwrite redoes it)")
    elif outcome.status == SlideStatus.busy:
        typer.echo(f"{outcome.slide}: skipped, {outcome.error.split(': ', 1)[-1]}")
    elif remote and outcome.status in (SlideStatus.done, SlideStatus.redone):
        flag = "" if outcome.reliable else f"  UNRELIABLE: {outcome.flags}"
        typer.echo(
            f"{outcome.slide}: {outcome.status}, positive={outcome.positive}, "
            f"category={outcome.category}{flag}"
        )


@app.command(rich_help_panel="Scan slides")
@user_errors
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the demo's outputs (created if missing).")
    ] = Path("slidescan-demo"),
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    workers: Annotated[
        int | None,
        typer.Option(
            min=0, help="DataLoader worker processes (default: as `run`).", show_default=False
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Scan again even if the demo ran here before.")
    ] = False,
    open_page: Annotated[
        bool, typer.Option("--open", help="Open the review page in your web browser afterwards.")
    ] = False,
) -> None:
    """Scan the demo slide shipped with slidescan and check its call against the known truth.

    The slide: real PatchCamelyon `valid` patches (CC0). The shipped model is trained on those
    slides too (issue 20), so the demo shows the tool working, not the model's accuracy.

    A 4.1 × 2.8 mm node at 0.972 µm/px with a 2.2 mm macro- and a 0.65 mm micrometastasis.

    Writes what `slidescan run` writes for a folder, index.html included, and says where to look.
    """
    from slidescan.batch.demo import DEMO_SLIDE, run_demo
    from slidescan.scan.scan_result import ScanOptions, describe

    options = ScanOptions(device=device, workers=workers, overwrite=overwrite)
    result = run_demo(
        out, weights=weights, options=options, on_result=lambda r: typer.echo(describe(r))
    )
    if result.outcome.status == SlideStatus.skipped:
        typer.echo(f"{DEMO_SLIDE}: done before with the same settings (--overwrite to redo)")
    typer.echo("\nTruth vs slidescan:")
    truth_call = result.truth["call"]["category"]
    call = result.report["call"]
    typer.echo(
        f"  slide: truth {truth_call}, slidescan {call['category']} "
        f"({'positive' if call['positive'] else 'negative'})  "
        f"{'right' if result.call_right else 'WRONG'}"
    )
    for match in result.lesions:
        found = (
            f"found as {match.found_category}, {match.found_diameter_mm:.2f} mm, "
            f"{match.offset_mm:.2f} mm from its centre"
            if match.found_category is not None
            else "NOT FOUND"
        )
        typer.echo(f"  {match.category} {match.diameter_mm:.2f} mm: {found}")
    if result.extra_lesions:
        typer.echo(f"  {result.extra_lesions} reported lesion(s) where the truth has none")
    from slidescan.batch.demo import write_demo_truth
    from slidescan.validate.validation import describe_validation, validate, write_validation

    truth_csv, annotations = write_demo_truth(out, result.truth)
    validation = validate(out, truth_csv, annotations)
    write_validation(validation, out / "validation")
    typer.echo(f"\nslidescan validate {out} --truth {truth_csv} --annotations {annotations}:")
    typer.echo(describe_validation(validation).removesuffix("Research use only.").rstrip())
    o = result.outputs
    look = [
        ("index.html", "the review page: open it in a browser"),
        (o.overlay.name if o.overlay else "", "the heatmap and lesion outlines over the slide"),
        (
            o.geojson.name,
            f"lesions for QuPath: open {out / DEMO_SLIDE} (a copy of the demo slide), then\n"
            "File > Import objects from file",
        ),
        (o.heatmap.name, "the heatmap as OME-Zarr (napari, ome-zarr)"),
        (o.report.name, "the call and every lesion, with the numbers behind them"),
        (
            "validation/validation.html",
            "the validation against the truth (truth.csv, annotations/)",
        ),
    ]
    # Only what is really there: the review page, for one, never fails a run if unwritable.
    look = [(name, what) for name, what in look if name and (out / name).exists()]
    width = max(len(name) for name, _ in look) + 2
    typer.echo(f"\nLook at (in {out}/):")
    for name, what in look:
        first, *more = what.splitlines()
        typer.echo(f"  {name:<{width}}{first}")
        for line in more:
            typer.echo(f"  {'':<{width}}{line}")
    typer.echo("Research use only.")
    page = out / "index.html"
    if open_page and page.is_file():
        import webbrowser

        if not webbrowser.open(page.resolve().as_uri()):
            typer.echo(f"no web browser found: open {page} yourself", err=True)
    if not result.right:
        raise typer.Exit(1)
