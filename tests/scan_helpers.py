"""Helpers (not tests) shared by the scan, batch, cluster and CLI tests: the slide/model scale,
untrained weights at the model's resolution, and a plain-terminal CLI runner."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner, Result

from slidescan.cli import app
from slidescan.engine.weights import ModelCard, save_weights
from slidescan.models import create_model

MODEL_MPP = 0.972
SLIDE_MPP = 0.486  # scale 2: one model pixel is 2 level-0 pixels
CELL_UM = 96 * MODEL_MPP  # side of one heatmap cell (stride = patch = 96 model px)
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}  # wide, plain help: no wrapped rows
FAST = ["--device", "cpu", "--workers", "0"]


def write_untrained_weights(path: Path, mpp: float = MODEL_MPP, seed: int = 0) -> Path:
    """A seeded, untrained pcamnet-s weights file (threshold 0.5) at ``mpp``."""
    torch.manual_seed(seed)
    save_weights(path, create_model("pcamnet-s"), ModelCard(model="pcamnet-s", mpp=mpp))
    return path


def invoke(*args: str | Path) -> Result:
    """``slidescan ARGS`` in-process with a wide, colourless terminal."""
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)
