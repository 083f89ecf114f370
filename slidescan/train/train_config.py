"""The settings of a training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slidescan.models import DEFAULT_MODEL


@dataclass
class TrainConfig:
    """Training settings; defaults follow the tutorial where it spoke (Adam, BCE, 10×100, 20%).

    The optimiser is AdamW: with ``weight_decay=0`` it is exactly the tutorial's Adam.

    A new setting's default must reproduce what training did before it existed: ``--resume``
    treats a checkpoint that predates a setting as written with its default.
    """

    model: str = DEFAULT_MODEL
    model_config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    val_fraction: float = 0.2
    holdout_from: str = ""  # weights file whose held-out patches this run holds out; "" = off
    augment: str = "strong"  # none, basic or strong (see slidescan.engine.augment)
    ema: float = 0.0  # per-step decay of an exponential moving average of the weights; 0 = off
    teachers: list[str] = field(default_factory=list)  # weights files to distil from; [] = off
    init: str = ""  # weights file to fine-tune from (its model, config and normalisation); "" = off
    stain_norm: str = "none"  # engine.stain_norm: map each slide / patch collection's colours
    distill_weight: float = 0.5  # the teachers' share of each target, at most the label's
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    int8: bool = True  # also store an int8 CPU engine (see slidescan.engine.quantize)
