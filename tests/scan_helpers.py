"""Helpers (not tests) shared by the scan, batch, cluster and CLI tests: the slide/model scale,
untrained weights at the model's resolution, a plain-terminal CLI runner, and a real scan
process interrupted the way a terminal's Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def ctrl_c_scan(
    slide: Path, weights: Path, out: Path, after: float, timeout: float = 120
) -> tuple[int, str]:
    """Run ``slidescan run SLIDE --out OUT`` (2 loader workers, overlay ``OUT.png``) in its own
    process group under faulthandler, SIGINT the whole group after ``after`` s unless it has
    finished, and return (exit status, stderr)."""
    cmd = [
        sys.executable, "-X", "faulthandler", "-m", "slidescan", "run", str(slide),
        "--out", str(out), "--weights", str(weights), "--device", "cpu", "--workers", "2",
        "--overlay", str(out.with_suffix(".png")),
    ]  # fmt: skip
    # A terminal's Ctrl-C reaches the whole foreground process group: DataLoader workers too.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    time.sleep(after)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr
