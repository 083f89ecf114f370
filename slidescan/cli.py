"""The ``slidescan`` command line: each command parses its options and calls one library function.

Heavy modules (torch, openslide, zarr) are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from slidescan.about import RESEARCH_USE_NOTICE, __version__
from slidescan.errors import SlidescanError, one_line

app = typer.Typer(
    help=(
        "Find lymph-node metastases in H&E whole-slide images: tumour-probability heatmaps and "
        f"per-slide calls. {RESEARCH_USE_NOTICE}"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])
_EXTENSIONS = ("torch", "onnxruntime", "zarr", "openslide", "tifffile", "imagecodecs")
DEBUG_ENV = "SLIDESCAN_DEBUG"
_debug = False


def _debugging() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def user_errors(func: F) -> F:
    """Turn SlidescanError and OSError into one line on stderr and exit code 1 (the traceback
    too with --debug or SLIDESCAN_DEBUG=1); Ctrl-C into exit code 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if signal.getsignal(signal.SIGINT) is quit_on_ctrl_c:
            # C++ extensions abort the process when a KeyboardInterrupt lands in their import:
            # load them while a Ctrl-C still just quits. Then a Ctrl-C unwinds, so partial
            # outputs are removed.
            for module in _EXTENSIONS:
                with contextlib.suppress(ImportError):
                    importlib.import_module(module)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:
            # The reader went away (`| head`): nothing left to tell it, no error to report.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except (SlidescanError, OSError) as exc:
            if _debugging():
                traceback.print_exception(exc, file=sys.stderr)
            typer.echo(f"error: {_error_line(exc)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _error_line(exc: BaseException) -> str:
    """An OSError names its file and reason (read-only, no space, no permission)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return one_line(exc)


def entry() -> None:
    """The ``slidescan`` program: the app, then an exit that no late Ctrl-C can change.

    Once a command has finished or given up (results committed, or partials removed), a Ctrl-C
    could only interrupt Python's slow teardown and turn the exit status into a signal. So the
    status is taken from the app, Ctrl-C is ignored from then on, and the process exits at once
    with that status: 0 done, 1 failed, 2 usage error, 130 interrupted. Not in ``app`` itself:
    in-process callers such as tests keep their own Ctrl-C and interpreter.
    """
    signal.signal(signal.SIGINT, quit_on_ctrl_c)  # until a command starts: nothing to clean up
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except KeyboardInterrupt:
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # e.g. `slidescan models | head -1` closed the pipe
            stream.flush()
    os._exit(code)


def quit_on_ctrl_c(signum: int, frame: object) -> None:
    """SIGINT before any command has started (start-up, option parsing): leave at once, 130."""
    os._exit(130)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
    return 1


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"slidescan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Print version."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show tracebacks with errors and log what the readers decide "
            f"(also {DEBUG_ENV}=1).",
        ),
    ] = False,
) -> None:
    """slidescan command line."""
    global _debug
    _debug = debug
    logging.basicConfig(
        level=logging.DEBUG if _debugging() else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # tifffile logs its own warning for each corrupt file; our one-line error already says it.
    logging.getLogger("tifffile").setLevel(logging.DEBUG if _debugging() else logging.ERROR)


DataArg = Annotated[
    list[Path],
    typer.Argument(
        help="Patch data: Kaggle folder (train_labels.csv + train/), PatchCamelyon .h5 files or "
        "folder, or class folders 0/1 (normal/tumor). Several are concatenated.",
        show_default=False,
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Weights file (default: the shipped pcamnet-v2 weights).", show_default=False
    ),
]


class Backend(StrEnum):
    """Inference engines (``slidescan.engine.inference.BACKENDS``)."""

    auto = "auto"
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


class Reader(StrEnum):
    """Slide decoders (``slidescan.io.slide.READERS``)."""

    auto = "auto"
    openslide = "openslide"


class Augment(StrEnum):
    """Training augmentation levels (``slidescan.engine.augment.AUGMENT_LEVELS``)."""

    strong = "strong"
    basic = "basic"
    none = "none"


class Schedule(StrEnum):
    """Learning-rate schedules of the trainer."""

    cosine = "cosine"
    constant = "constant"


class StainNorm(StrEnum):
    """Stain normalisation methods (``slidescan.engine.stain_norm.STAIN_METHODS``)."""

    none = "none"
    macenko = "macenko"
    reinhard = "reinhard"


StainNormOpt = Annotated[
    StainNorm | None,
    typer.Option(
        help="Map each slide's colours (for patches: the collection's) onto the model's training "
        "colours, fitted once on a sample of its tissue: reinhard (CIELAB mean and spread) or "
        "macenko (stain vectors). Default: what the model was trained with (the shipped model: "
        "none; see benchmarks/RESULTS.md §11).",
        show_default=False,
    ),
]


TumourClassOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="QuPath classification names that mean tumour (repeatable).",
        show_default="Tumor, Tumour, Metastasis",
    ),
]


# Devices stay free text: cuda:N has no fixed list. The engine checks them.
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        help="Inference engine: torch; onnx (ONNX Runtime float32, CPU only: torch's numbers); "
        "onnx-int8 (the int8 copy stored in the weights, CPU only: 2–3× faster, same "
        "PatchCamelyon AUC, probabilities within ~0.005 on average); auto = onnx-int8 on the CPU "
        "when the weights carry it, else onnx; torch on GPUs. Model cards' metrics are float32.",
    ),
]
WorkersOpt = Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")]
TtaOpt = Annotated[bool, typer.Option("--tta", help="Average over the 8 flips/rotations.")]
PatchBatchOpt = Annotated[int, typer.Option(min=1, help="Patches per batch.")]
ResizeOpt = Annotated[
    bool, typer.Option("--resize", help="Centre-crop and resize images that are not 96×96 RGB.")
]


FINE_TUNE_EPOCHS, FINE_TUNE_LR = 4, 1e-4


@app.command()
@user_errors
def train(
    data: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Patch data: Kaggle folder (train_labels.csv + train/), PatchCamelyon .h5 files "
            "or folder, or class folders 0/1 (normal/tumor). Several are concatenated; may be "
            "mixed with --slides or left out.",
            show_default=False,
        ),
    ] = None,
    slides: Annotated[
        Path | None,
        typer.Option(
            help="Folder of whole slides to train on: patches are sampled at the model's µm/px, "
            "tumour inside the --annotations outlines, normal from tissue away from them. Whole "
            "slides are held out to choose the epoch and thresholds. Fine-tunes the shipped "
            "model unless --init says otherwise.",
            show_default=False,
        ),
    ] = None,
    annotations: Annotated[
        Path | None,
        typer.Option(
            help="Tumour outlines of the --slides, one file per slide named after it: QuPath "
            "GeoJSON or Camelyon16 ASAP XML. A slide without one is all normal.",
            show_default=False,
        ),
    ] = None,
    tumour_class: TumourClassOpt = None,
    patches_per_slide: Annotated[
        int, typer.Option(min=1, help="At most this many patches of each class per slide.")
    ] = 2000,
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune from these weights ('shipped': the shipped model; 'none': train from "
            f"scratch). Default: shipped with --slides, else none. Fine-tuning defaults: "
            f"--epochs {FINE_TUNE_EPOCHS}, --lr {FINE_TUNE_LR:g}; the model and its input "
            "normalisation come from the weights.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Weights file to write (best validation epoch).")
    ] = Path("slidescan-model.pt"),
    model: Annotated[
        str, typer.Option(help="Architecture (see `slidescan models`).")
    ] = "pcamnet-v2",
    val: Annotated[
        list[Path] | None,
        typer.Option(help="Validation data; default: hold out --val-fraction of DATA."),
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="Held-out fraction without --val.")] = 0.2,
    split: Annotated[
        str, typer.Option(help="Split to read from folders that have several.")
    ] = "train",
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help=f"Epochs (default: 10; fine-tuning: {FINE_TUNE_EPOCHS})."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per step.")] = 100,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"AdamW peak learning rate (default: 0.001; fine-tuning: {FINE_TUNE_LR:g})."
        ),
    ] = None,
    weight_decay: Annotated[
        float, typer.Option(help="AdamW decoupled weight decay (0 = the tutorial's Adam).")
    ] = 0.0,
    schedule: Annotated[
        Schedule, typer.Option(help="Learning-rate schedule: cosine (with warm-up) or constant.")
    ] = Schedule.cosine,
    augment: Annotated[
        Augment,
        typer.Option(
            help="Augmentation: strong (dihedral + strong HED, hue/saturation, "
            "brightness/contrast, blur), basic (dihedral + light HED) or none."
        ),
    ] = Augment.strong,
    ema: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9999,
            help="Validate and keep an exponential moving average of the weights with this "
            "per-step decay (e.g. 0.998); 0 keeps the raw weights.",
        ),
    ] = 0.0,
    teacher: Annotated[
        list[Path] | None,
        typer.Option(
            help="Distil from this trained weights file (repeat for an ensemble): each target "
            "becomes a mix of the label and the teachers' probability (sigmoid of their mean "
            "logit). Teachers must have held out the same patches (same DATA, --val-fraction "
            "and --seed); not with --val.",
        ),
    ] = None,
    distill_weight: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.5, help="The teachers' share of each target with --teacher (≤ 0.5)."
        ),
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and augmentation.")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run of the same settings.")
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(help="Also store an int8 copy for 2–3× faster CPU scans (`quantize`)."),
    ] = True,
    resize: ResizeOpt = False,
    stain_norm: StainNormOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
) -> None:
    """Train a patch classifier, or fine-tune one on a lab's annotated slides, and write a
    weights file with its model card."""
    from slidescan.engine.weights import ModelCard, load_weights
    from slidescan.io.annotations import DEFAULT_TUMOUR_CLASSES
    from slidescan.io.patches import ConcatPatchDataset, open_patch_datasets
    from slidescan.train.slide_patches import open_annotated_slides
    from slidescan.train.trainer import TrainConfig
    from slidescan.train.trainer import train as run_training

    if distill_weight != 0.5 and not teacher:
        raise SlidescanError("--distill-weight needs --teacher")
    if not data and slides is None:
        raise SlidescanError("give patch DATA, --slides DIR, or both")
    if annotations is not None and slides is None:
        raise SlidescanError("--annotations needs --slides")
    init_path = _init_weights(init, fine_tune_default=slides is not None)
    if init_path is not None:
        init_card = load_weights(init_path).card
        if model != "pcamnet-v2" and model != init_card.model:
            raise SlidescanError(f"--model {model} differs from --init's model {init_card.model}")
        model = init_card.model
    parts = [open_patch_datasets(data, split=split, resize=resize)] if data else []
    if slides is not None:
        card = init_card if init_path is not None else ModelCard(model=model)
        classes = tuple(tumour_class) if tumour_class else DEFAULT_TUMOUR_CLASSES
        parts.append(open_annotated_slides(
            slides, annotations, card, tumour_classes=classes, max_per_class=patches_per_slide,
            seed=seed,
        ))  # fmt: skip
    train_data = parts[0] if len(parts) == 1 else ConcatPatchDataset(parts)
    val_data = open_patch_datasets(val, split="valid", resize=resize) if val else None
    fine_tune = init_path is not None
    epochs = epochs or (FINE_TUNE_EPOCHS if fine_tune else 10)
    lr = lr or (FINE_TUNE_LR if fine_tune else 1e-3)
    cfg = TrainConfig(
        init=str(init_path.resolve()) if init_path else "",
        stain_norm=stain_norm.value if stain_norm else "none",
        model=model, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        schedule=schedule.value, val_fraction=val_fraction, augment=augment.value, ema=ema,
        teachers=[str(t.resolve()) for t in teacher or []], distill_weight=distill_weight,
        seed=seed, workers=workers, device=device, int8=int8,
    )  # fmt: skip
    description = train_data.description
    if val_data is not None:
        description += f"; validation: {val_data.description}"
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    if is_main:
        typer.echo(f"training {model} on {description}", err=True)
    result = run_training(
        train_data, out, cfg, val_data=val_data, resume=resume, data_description=description,
        command="slidescan " + shlex.join(sys.argv[1:]),
    )  # fmt: skip
    if not is_main:
        return
    m = result.metrics
    typer.echo(
        f"best epoch {result.best_epoch}: val AUC {m['auc']:.4f}, accuracy {m['accuracy']:.4f} "
        f"at threshold {m['threshold']:.3f}; {result.seconds:.0f} s; weights: {result.weights}"
    )


def _init_weights(init: str | None, *, fine_tune_default: bool) -> Path | None:
    """The weights file ``--init`` names (None: train from scratch)."""
    from slidescan.engine.weights import shipped_weights_path

    choice = init or ("shipped" if fine_tune_default else "none")
    if choice == "none":
        return None
    if choice == "shipped":
        return shipped_weights_path()
    path = Path(choice)
    if not path.is_file():
        raise SlidescanError(f"--init: no weights file at {path}")
    return path


@app.command()
@user_errors
def models() -> None:
    """List the model architectures: name, parameter count, input size."""
    from slidescan.models import DEFAULT_MODEL, count_parameters, create_model, list_models

    for spec in list_models():
        n = count_parameters(create_model(spec.name))
        mark = " (default)" if spec.name == DEFAULT_MODEL else ""
        typer.echo(
            f"{spec.name:<12} {n:>12,} params  input {spec.input_size}×{spec.input_size}  "
            f"{spec.description}{mark}"
        )


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=None, allow_nan=True))


@app.command()
@user_errors
def quantize(
    data: DataArg,
    weights: Annotated[Path, typer.Option(help="Weights file to add the int8 engine to.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Write here instead of replacing --weights.", show_default=False),
    ] = None,
    patches: Annotated[int, typer.Option(min=16, help="Calibration patches.")] = 512,
    split: Annotated[
        str, typer.Option(help="Split to read from folders that have several.")
    ] = "train",
    resize: ResizeOpt = False,
    seed: Annotated[int, typer.Option(help="Which patches are drawn.")] = 0,
) -> None:
    """Store an int8 copy of a model in its weights file: 2–3× faster scans on CPU.

    Calibrates on random patches of DATA (use the training data) and prints how closely the
    int8 model follows float32 on as many other patches. `slidescan run` then uses it on the
    CPU (--backend auto); --backend onnx keeps float32. `slidescan train` does this itself.
    """
    from slidescan.engine.quantize import quantize_weights
    from slidescan.engine.weights import load_weights, save_weights
    from slidescan.io.patches import open_patch_datasets

    loaded = load_weights(weights)
    dataset = open_patch_datasets(data, split=split, resize=resize)
    int8, agreement = quantize_weights(loaded, dataset, patches=patches, seed=seed)
    target = out or weights
    save_weights(
        target, loaded.model, loaded.card, int8_onnx=int8,
        feature_reference=loaded.feature_reference,
    )  # fmt: skip
    typer.echo(agreement.describe())
    typer.echo(f"int8 engine ({len(int8) / 1e6:.1f} MB) stored in {target}")


@app.command()
@user_errors
def calibrate(
    data: DataArg,
    weights: Annotated[Path, typer.Option(help="Weights file to calibrate (in place).")],
    holdout: Annotated[
        list[Path] | None,
        typer.Option(
            help="Held-out patches; default: the part of DATA the trainer held out (its ids "
            "are in the model card).",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        str, typer.Option(help="Split to read from folders that have several.")
    ] = "train",
    tissue_cells: Annotated[
        int, typer.Option(min=100, help="Tissue cells of the simulated normal slides.")
    ] = 40_000,
    rate: Annotated[
        float,
        typer.Option(
            min=0.0001, max=0.5, help="Share of those slides allowed to be called positive."
        ),
    ] = 0.01,
    int8: Annotated[bool, typer.Option(help="Also (re)build the int8 CPU engine.")] = True,
    resize: ResizeOpt = False,
    seed: Annotated[int, typer.Option(help="Seed of the simulated slides.")] = 0,
) -> None:
    """Set a model's tile and lesion thresholds, out-of-distribution reference and int8 engine.

    DATA is the model's training data. Everything is chosen on patches held out of training:
    the tile threshold maximises their accuracy; the lesion seed threshold calls at most --rate
    of simulated all-normal slides of --tissue-cells cells positive. `slidescan train` does this
    itself; run it again after changing the policy.
    """
    from torch.utils.data import Dataset

    from slidescan.engine.weights import load_weights
    from slidescan.io.patches import open_patch_datasets
    from slidescan.train.calibration import calibrate_weights, split_by_ids

    card = load_weights(weights).card
    dataset = open_patch_datasets(data, split=split, resize=resize)
    train_part: Dataset
    held: Dataset
    if holdout:
        train_part, held = dataset, open_patch_datasets(holdout, split="valid", resize=resize)
    else:
        ids = card.training.get("holdout_ids") or []
        if not ids:
            raise SlidescanError(
                f"{weights}: the model card lists no held-out patches; pass --holdout"
            )
        train_part, held = split_by_ids(dataset, ids)
    result = calibrate_weights(
        weights, train_part, held, tissue_cells=tissue_cells, target_rate=rate, int8=int8,
        seed=seed,
    )  # fmt: skip
    typer.echo(result.describe())


@app.command()
@user_errors
def evaluate(
    data: DataArg,
    weights: WeightsOpt = None,
    split: Annotated[
        str, typer.Option(help="Split to read from folders that have several.")
    ] = "valid",
    tta: TtaOpt = False,
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
        + (" with TTA" if tta else "")
    )
    typer.echo(format_metrics(result.metrics))
    if report is not None:
        typer.echo(f"report written to {report}/")


@app.command()
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


@app.command()
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
    tta: TtaOpt = False,
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


@app.command()
@user_errors
def run(
    input: Annotated[
        Path,
        typer.Argument(
            help="A slide (any OpenSlide format: SVS, NDPI, MRXS, tiled TIFF…; or a PNG/JPEG/TIFF "
            "image) or a directory of slides.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
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
            help="Level-0 microns per pixel for every slide, overriding their metadata "
            "(0.25 ≈ 40×, 0.5 ≈ 20×).",
            show_default=False,
        ),
    ] = None,
    default_mpp: Annotated[
        float | None,
        typer.Option(
            help="Microns per pixel for slides whose metadata has none; the others keep theirs.",
            show_default=False,
        ),
    ] = None,
    any_scale: Annotated[
        bool,
        typer.Option(
            "--any-scale",
            help="Scan even when the slide's µm/px makes a model patch cover fewer than 24 slide "
            "pixels (by default refused before scanning: usually a wrong --mpp).",
        ),
    ] = False,
    full_paths: Annotated[
        bool,
        typer.Option(
            "--full-paths",
            help="Record each slide's absolute path in its outputs (default: the file name only; "
            "paths often carry patient or study identifiers).",
        ),
    ] = False,
    stride: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Grid step in model pixels (default: the patch size, 96 — non-overlapping "
            "tiles, each tissue pixel seen once; smaller strides cost (96/stride)² more; "
            "--dense gives the stride-32 map).",
            show_default=False,
        ),
    ] = None,
    min_tissue: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Tissue fraction a cell needs to be scanned.")
    ] = 0.25,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Seed threshold of a lesion: the probability one of its tiles must reach "
            "(default: the model's own, calibrated so that about 1% of simulated normal slides "
            "of 40,000 tissue tiles are called positive). A lesion extends over neighbouring "
            "tiles at the model's tile threshold (or this value, if lower).",
            show_default=False,
        ),
    ] = None,
    overlay: Annotated[
        Path | None,
        typer.Option(
            help="Write the heatmap over a thumbnail: a PNG path for one slide, a folder for a "
            "directory of slides.",
            show_default=False,
        ),
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average over the 8 flips/rotations (8× compute).")
    ] = False,
    stain_norm: StainNormOpt = None,
    dense: Annotated[
        bool,
        typer.Option(
            "--dense",
            help="Stride-32 heatmap (the PCam label's centre-region resolution): finer lesion "
            "outlines and diameters. Fully convolutional models (pcamnet-s) run over blocks for "
            "about 2× the stride-96 time; others (the default pcamnet-v2) score overlapping "
            "tiles, 9× the work.",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo slides whose output already exists.")
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
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
            help="Distribute a directory's slides over a Dask cluster, one task per slide: "
            "tcp://host:8786, a scheduler file (.json, e.g. from dask-jobqueue on SLURM), or "
            "local:N for N worker processes here. Workers need the same paths.",
            show_default=False,
        ),
    ] = None,
    patients: Annotated[
        Path | None,
        typer.Option(
            help="CSV with columns slide,patient (one lymph node per slide): a directory run "
            "also writes OUT/patients.csv with each patient's pN stage (Camelyon17 rules).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Scan slides: tissue mask, tile at the model's resolution, heatmap (zarr) and slide call.

    One slide: slidescan run slide.svs --out heatmap.zarr

    A directory: slidescan run slides/ --out results/

    Directory runs are resumable: complete outputs are skipped.

    A failing slide is recorded in summary.csv and the rest go on; exit code 1 if any failed.
    """
    from slidescan.io.outputs import is_complete
    from slidescan.scan.batch import scan_directory
    from slidescan.scan.scanner import ScanOptions, describe, scan_slide

    if not input.exists():
        raise SlidescanError(f"{input}: no such file or directory")
    options = ScanOptions(
        mpp=mpp, stride=stride, min_tissue=min_tissue, batch_size=batch_size, workers=workers,
        device=device, backend=backend.value, tta=tta, overwrite=overwrite, threshold=threshold,
        dense=dense, reader=reader.value, default_mpp=default_mpp, full_paths=full_paths,
        any_scale=any_scale, stain_norm=stain_norm.value if stain_norm else None,
    )  # fmt: skip
    if patients is not None and not input.is_dir():
        raise SlidescanError("--patients stages the slides of a directory run: give a folder")
    if input.is_dir():
        from slidescan.scan.patients import PATIENTS_NAME, read_patient_map

        patient_of = read_patient_map(patients) if patients is not None else None
        out_dir = out or Path("slidescan-results")
        outcomes = scan_directory(
            input, out_dir, weights=weights, options=options, overlay_dir=overlay,
            scheduler=scheduler, patients=patient_of,
            on_outcome=functools.partial(_echo_outcome, remote=bool(scheduler)),
            on_result=lambda result: typer.echo(describe(result)),
        )  # fmt: skip
        failed = sum(o.status == "failed" for o in outcomes)
        page = out_dir / "index.html"
        typer.echo(
            f"{len(outcomes) - failed}/{len(outcomes)} slides done, {failed} failed; "
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
    if is_complete(heatmap) and not overwrite:
        raise SlidescanError(f"{heatmap} already exists (use --overwrite to redo it)")
    typer.echo(
        describe(scan_slide(input, heatmap, weights=weights, overlay=overlay, **asdict(options)))
    )


def _echo_outcome(outcome: Any, *, remote: bool) -> None:
    """A directory run's line for a slide that was not scanned here (or, on a cluster, was)."""
    if outcome.status == "failed":
        typer.echo(f"{outcome.slide}: FAILED  {outcome.error}", err=True)
    elif outcome.status == "skipped":
        typer.echo(f"{outcome.slide}: already done (use --overwrite to redo)")
    elif outcome.status == "busy":
        typer.echo(f"{outcome.slide}: skipped, {outcome.error.split(': ', 1)[-1]}")
    elif remote and outcome.status in ("done", "redone"):
        flag = "" if outcome.reliable else f"  UNRELIABLE: {outcome.flags}"
        typer.echo(
            f"{outcome.slide}: {outcome.status}, positive={outcome.positive}, "
            f"category={outcome.category}{flag}"
        )


@app.command()
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

    The slide: real PatchCamelyon patches (CC0) from slides the model never saw in training.

    A 4.1 × 2.8 mm node at 0.972 µm/px with a 2.2 mm macro- and a 0.65 mm micrometastasis.

    Writes what `slidescan run` writes for a folder, index.html included, and says where to look.
    """
    from slidescan.scan.demo import DEMO_SLIDE, demo_folder, run_demo
    from slidescan.scan.scanner import ScanOptions, describe

    options = ScanOptions(device=device, workers=workers, overwrite=overwrite)
    result = run_demo(
        out, weights=weights, options=options, on_result=lambda r: typer.echo(describe(r))
    )
    if result.outcome.status == "skipped":
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
    from slidescan.scan.demo import write_demo_truth
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
            f"lesions for QuPath: open {demo_folder() / DEMO_SLIDE}, then\n"
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
