"""`slidescan validate`: a finished run against a lab's truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slidescan.cli.app import _print_json, app, user_errors
from slidescan.cli.options import TumourClassOpt


@app.command(rich_help_panel="Check results")
@user_errors
def validate(
    results: Annotated[
        Path, typer.Argument(help="Output folder of `slidescan run` (or of single-slide runs).")
    ],
    truth: Annotated[
        Path,
        typer.Option(
            help="CSV: slide (file name as in the results), label (negative, itc, micro, macro; "
            "or normal/tumor, 0/1 for slide-level truth), optional patient.",
            show_default=False,
        ),
    ],
    annotations: Annotated[
        Path | None,
        typer.Option(
            help="Folder of tumour outlines, one file per slide named after it: QuPath GeoJSON "
            "(.geojson) or Camelyon16 ASAP XML (.xml). Adds the lesion-level FROC.",
            show_default=False,
        ),
    ] = None,
    tumour_class: TumourClassOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for validation.json, figures and validation.html "
            "(default: RESULTS/validation).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print validation.json only.")] = False,
) -> None:
    """Compare a finished run with the truth: slide AUC, sensitivity, specificity, kappa, FROC.

    slidescan validate results/ --truth truth.csv --annotations annotations/
    """
    from slidescan.io.annotations import DEFAULT_TUMOUR_CLASSES
    from slidescan.validate.validation import describe_validation, validate, write_validation

    classes = tuple(tumour_class) if tumour_class else DEFAULT_TUMOUR_CLASSES
    result = validate(results, truth, annotations, classes)
    written = write_validation(result, out or results / "validation")
    if as_json:
        _print_json(result)
        return
    typer.echo(describe_validation(result))
    typer.echo(f"written: {', '.join(str(p) for p in written)}")
