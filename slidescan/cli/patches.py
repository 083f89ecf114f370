"""`slidescan evaluate` and `predict`: a model on patch images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slidescan.cli.app import _print_json, app, user_errors
from slidescan.cli.options import (
    BackendOpt,
    DataArg,
    DeviceOpt,
    PatchBatchOpt,
    PatchTtaOpt,
    ResizeOpt,
    StainNormOpt,
    WeightsOpt,
    WorkersOpt,
)
from slidescan.vocabulary import Backend


@app.command(rich_help_panel="Check results")
@user_errors
def evaluate(
    data: DataArg,
    weights: WeightsOpt = None,
    split: Annotated[
        str, typer.Option(help="Split to read from folders that have several.")
    ] = "valid",
    tta: PatchTtaOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object only.")] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Folder for ROC, calibration, confusion and example-patch figures."),
    ] = None,
    batch_size: PatchBatchOpt = 256,
    resize: ResizeOpt = False,
    stain_norm: StainNormOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = Backend.auto,
    workers: WorkersOpt = 2,
) -> None:
    """Measure a model on labelled patches: AUC (95% CI), accuracy, sensitivity, specificity…"""
    from slidescan.engine.stain_norm import normalise_patches
    from slidescan.engine.weights import load_weights
    from slidescan.io.patches import open_patch_datasets
    from slidescan.train.evaluation import evaluate as run_evaluation
    from slidescan.train.evaluation import write_evaluation_report
    from slidescan.train.metrics import format_metrics

    loaded = load_weights(weights)
    dataset = open_patch_datasets(data, split=split, resize=resize)
    method = stain_norm.value if stain_norm else loaded.card.stain_norm
    dataset = normalise_patches(dataset, method, loaded.card.stain_reference)
    result = run_evaluation(
        loaded, dataset, device=device, backend=backend.value, tta=tta, batch_size=batch_size,
        workers=workers,
    )  # fmt: skip
    if report is not None:
        title = f"{loaded.card.model} on {dataset.description}" + (" (TTA)" if tta else "")
        write_evaluation_report(report, result, dataset, title)
    if as_json:
        _print_json(result.summary())
        return
    typer.echo(
        f"{loaded.card.model} ({result.engine}) on {dataset.description}"
        + (" with TTA (8 flips/rotations)" if tta else " (one pass, no TTA)")
    )
    typer.echo(format_metrics(result.metrics))
    if report is not None:
        typer.echo(f"report written to {report}/")


@app.command(rich_help_panel="Check results")
@user_errors
def predict(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Patch image files and/or folders (searched recursively).", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option(help="CSV file to write.")] = Path("predictions.csv"),
    weights: WeightsOpt = None,
    kaggle: Annotated[
        bool,
        typer.Option("--kaggle", help="Kaggle submission format: id,label (label = probability)."),
    ] = False,
    tta: PatchTtaOpt = True,
    batch_size: PatchBatchOpt = 256,
    resize: ResizeOpt = False,
    device: DeviceOpt = "auto",
    backend: BackendOpt = Backend.auto,
    workers: WorkersOpt = 2,
) -> None:
    """Tumour probability for each patch image, written to a CSV."""
    from slidescan.engine.predict import predict_patches
    from slidescan.engine.weights import load_weights

    loaded = load_weights(weights)
    n = predict_patches(
        loaded, inputs, out, kaggle=kaggle, tta=tta, batch_size=batch_size, resize=resize,
        device=device, backend=backend.value, workers=workers,
    )  # fmt: skip
    typer.echo(f"{n} patches → {out}")
