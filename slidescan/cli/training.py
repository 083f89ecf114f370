"""`slidescan train`, `models`, `quantize` and `calibrate`: making and preparing models."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from slidescan.cli.app import app, user_errors
from slidescan.cli.options import (
    DataArg,
    DeviceOpt,
    ResizeOpt,
    StainNormOpt,
    TumourClassOpt,
    WorkersOpt,
)
from slidescan.errors import SlidescanError
from slidescan.vocabulary import Augment, Schedule

FINE_TUNE_EPOCHS, FINE_TUNE_LR = 4, 1e-4


@app.command(rich_help_panel="Models")
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
    hard_negatives: Annotated[
        Path | None,
        typer.Option(
            help="Output folder of a finished `slidescan run` over the --slides: the tiles of "
            "its lesions away from the tumour outlines (on a slide without annotations, all of "
            "them) are its false positives, taken first among each slide's normal patches.",
            show_default=False,
        ),
    ] = None,
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
    holdout_from: Annotated[
        Path | None,
        typer.Option(
            help="Hold out exactly the patches this weights file held out (its card lists "
            "them) instead of a --val-fraction: a run that adds data to an earlier run's can "
            "then be compared with it on the same patches and distilled from it. DATA must "
            "hold them all; --val-fraction is ignored.",
            show_default=False,
        ),
    ] = None,
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
    from slidescan.train.train_config import TrainConfig
    from slidescan.train.trainer import train as run_training

    if distill_weight != 0.5 and not teacher:
        raise SlidescanError("--distill-weight needs --teacher")
    if not data and slides is None:
        raise SlidescanError("give patch DATA, --slides DIR, or both")
    if annotations is not None and slides is None:
        raise SlidescanError("--annotations needs --slides")
    if hard_negatives is not None and slides is None:
        raise SlidescanError("--hard-negatives needs --slides")
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
            hard_negatives=hard_negatives, seed=seed,
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
        holdout_from=str(holdout_from.resolve()) if holdout_from else "",
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


@app.command(rich_help_panel="Models")
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


@app.command(rich_help_panel="Models")
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


@app.command(rich_help_panel="Models")
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
    simulated_slides: Annotated[
        int,
        typer.Option(
            min=100,
            help="Simulated normal slides the seeds are chosen on (half as many fresh ones "
            "report the rates): more give steadier seeds (a 1% rate rests on 1% of them).",
        ),
    ] = 1000,
    high_rate: Annotated[
        float,
        typer.Option(
            min=0.0001,
            max=0.5,
            help="Share of the simulated slides the `run --sensitivity high` seed calls "
            "positive (no high point unless above --rate).",
        ),
    ] = 0.05,
    tile_specificity: Annotated[
        float | None,
        typer.Option(
            min=0.5,
            max=0.9999,
            help="Set the tile threshold so that this share of held-out normal patches is "
            "called normal, instead of maximising held-out accuracy (which is too strict on "
            "other slides: held-out patches come from the training slides).",
            show_default=False,
        ),
    ] = None,
    int8: Annotated[bool, typer.Option(help="Also (re)build the int8 CPU engine.")] = True,
    resize: ResizeOpt = False,
    seed: Annotated[int, typer.Option(help="Seed of the simulated slides.")] = 0,
) -> None:
    """Set a model's tile and lesion thresholds, out-of-distribution reference and int8 engine.

    DATA is the model's training data. Everything is chosen on patches held out of training:
    the tile threshold maximises their accuracy (or meets --tile-specificity); the lesion seed
    threshold calls at most --rate of simulated all-normal slides of --tissue-cells cells
    positive, and the `run --sensitivity high` seed --high-rate of them (replacing any earlier
    high point; none unless --high-rate is above --rate).
    `slidescan train` does this itself; run it again after changing the policy.
    """
    from torch.utils.data import Dataset

    from slidescan.engine.weights import load_weights
    from slidescan.io.patches import open_patch_datasets
    from slidescan.train.calibration import calibrate_weights
    from slidescan.train.data_split import recorded_holdout_ids, split_by_ids

    card = load_weights(weights).card
    dataset = open_patch_datasets(data, split=split, resize=resize)
    train_part: Dataset
    held: Dataset
    if holdout:
        train_part, held = dataset, open_patch_datasets(holdout, split="valid", resize=resize)
    else:
        ids = recorded_holdout_ids(card.training, f"{weights} (pass --holdout)")
        train_part, held = split_by_ids(dataset, ids)
    result = calibrate_weights(
        weights, train_part, held, tissue_cells=tissue_cells, target_rate=rate, int8=int8,
        seed=seed, tile_specificity=tile_specificity, high_rate=high_rate,
        simulated_slides=simulated_slides,
    )  # fmt: skip
    typer.echo(result.describe())
