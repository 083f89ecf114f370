"""Device choice and the per-device details: AMP and pinned memory on CUDA, fp32 elsewhere."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from slidescan.errors import SlidescanError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SlidescanError(
            f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)", param="device"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SlidescanError(
            f"device {name!r} was asked for but no CUDA GPU is available", param="device"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SlidescanError(
            f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible",
            param="device",
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SlidescanError("device 'mps' was asked for but MPS is not available", param="device")
    return device


CPU_QUOTA_FILE = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
MAX_CPU_SCAN_WORKERS = 16  # each holds its own model (~80 MB): more only by asking


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask (e.g. a SLURM allocation), further
    limited by a cgroup CPU quota (e.g. ``docker --cpus``)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    try:
        quota, period = CPU_QUOTA_FILE.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return cores


def default_scan_workers(device: torch.device) -> int:
    """DataLoader workers for a slide scan: on a CPU one per core (at most 16), as each worker
    also runs the model; a GPU is fed by up to 8 readers."""
    cores = usable_cores()
    return min(MAX_CPU_SCAN_WORKERS if device.type == "cpu" else 8, cores)


def default_scan_batch(device: torch.device) -> int:
    """Patches per model batch in a slide scan. A CPU worker's one-thread model is as fast at 64
    as at 256 and holds ~150 MB less; a GPU wants bigger batches."""
    return 64 if device.type == "cpu" else 256


def pin_memory(device: torch.device) -> bool:
    """Pinned host memory only pays (and only works) for CUDA transfers."""
    return device.type == "cuda"


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA; fp32 elsewhere (bf16 on CPUs without bf16 units is far slower)."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            yield
    else:
        yield
