"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slidescan.vocabulary import Backend, StainNorm

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
        rich_help_panel="Model and call",
        help="Weights file (default: the shipped pcamnet-v2 weights).",
        show_default=False,
    ),
]


StainNormOpt = Annotated[
    StainNorm | None,
    typer.Option(
        rich_help_panel="Model and call",
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
DeviceOpt = Annotated[
    str,
    typer.Option(
        rich_help_panel="Speed and hardware",
        help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.",
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        rich_help_panel="Speed and hardware",
        help="Inference engine: torch; onnx (ONNX Runtime float32, CPU only: torch's numbers); "
        "onnx-int8 (the int8 copy stored in the weights, CPU only: 2–3× faster, same "
        "PatchCamelyon AUC, probabilities within ~0.005 on average); auto = onnx-int8 on the CPU "
        "when the weights carry it, else onnx; torch on GPUs. Model cards' metrics are float32.",
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(rich_help_panel="Speed and hardware", min=0, help="DataLoader worker processes."),
]
PatchTtaOpt = Annotated[
    bool,
    typer.Option(
        "--tta/--no-tta",
        help="Average each patch's logit over its 8 flips/rotations (on by default for "
        "patches: +0.008 AUC on PatchCamelyon valid for about 2.5× the time). --no-tta: one "
        "pass, as `run` scans by default.",
    ),
]
PatchBatchOpt = Annotated[
    int, typer.Option(rich_help_panel="Speed and hardware", min=1, help="Patches per batch.")
]
ResizeOpt = Annotated[
    bool, typer.Option("--resize", help="Centre-crop and resize images that are not 96×96 RGB.")
]
