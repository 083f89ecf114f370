"""DistributedDataParallel training: 2 CPU processes under torchrun (gloo); shard helpers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from slidescan.engine.weights import load_weights
from slidescan.train.distributed import DistContext, gather_shards, shard_indices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy_folders(root: Path, n: int = 40) -> Path:
    """Class folders of 96×96 patches: 1 = dark purple, 0 = pale pink, with noise."""
    rng = np.random.default_rng(0)
    for label, colour in ((0, (235, 190, 215)), (1, (90, 40, 120))):
        (root / str(label)).mkdir(parents=True)
        for i in range(n):
            img = np.clip(rng.normal(colour, 25, (96, 96, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / str(label) / f"{i}.png")
    return root


def test_shards_cover_every_item_once() -> None:
    n, world = 11, 3
    shards = [shard_indices(n, DistContext(rank=r, world_size=world)) for r in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))


def test_gather_in_a_world_of_one_is_identity() -> None:
    values = np.arange(5, dtype=np.float32)
    assert gather_shards(values, 5, DistContext()) is values


def test_torchrun_two_cpu_processes_train_one_model(tmp_path: Path) -> None:
    data = _toy_folders(tmp_path / "data")
    out = tmp_path / "ddp.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "slidescan", "train", str(data), "--epochs", "2", "--batch-size", "20",
        "--workers", "0", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Only rank 0 reports and writes.
    assert proc.stdout.count("best epoch") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ddp.pt"]
    card = load_weights(out).card
    assert card.training["processes"] == 2
    # Validation metrics were gathered over the whole held-out set, not one rank's shard.
    assert card.metrics["validation"]["n"] == card.training["n_val"] == 16
    assert card.metrics["validation"]["auc"] > 0.9


def test_batch_must_divide_over_processes(tmp_path: Path) -> None:
    data = _toy_folders(tmp_path / "data", n=6)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "slidescan", "train", str(data), "--epochs", "1", "--batch-size", "5",
        "--workers", "0", "--out", str(tmp_path / "x.pt"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "must divide evenly over 2 processes" in proc.stderr
    assert not (tmp_path / "x.pt").exists()
