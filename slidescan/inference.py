"""Run a patch model over uint8 batches on a device: where pixels become probabilities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from slidescan.augment import dihedral
from slidescan.device import autocast, pin_memory, select_device
from slidescan.errors import SlidescanError
from slidescan.weights import LoadedModel, ModelCard


class Normalizer:
    """uint8 N×3×H×W on the host → normalised float on ``device`` (channels-last: fastest)."""

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(card.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(card.std, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: Tensor, augment: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Normalise ``batch``; ``augment`` (training only) acts on float RGB in [0, 1] first."""
        # Copy uint8 (4× fewer bytes than float) and convert on the device.
        x = batch.to(self.device, non_blocking=True).float().div_(255.0)
        if augment is not None:
            x = augment(x)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


@dataclass
class Predictor:
    """A trained model placed on a device, with the input normaliser its card asks for."""

    model: nn.Module
    normalizer: Normalizer
    device: torch.device


BACKENDS = ("auto", "torch", "onnx")


def make_predictor(loaded: LoadedModel, device: str = "auto", backend: str = "auto") -> Predictor:
    """Put ``loaded`` on ``device`` (auto: cuda > mps > cpu), ready for inference.

    ``backend``: ``torch``; ``onnx`` (ONNX Runtime, CPU only: 1.8× eager PyTorch there, see
    benchmarks/RESULTS.md); ``auto`` = onnx on the CPU when onnxruntime is installed (it is a
    dependency), else torch.
    """
    from slidescan.onnx_backend import OnnxModel, onnx_available

    if backend not in BACKENDS:
        raise SlidescanError(f"unknown backend {backend!r} (use {', '.join(BACKENDS)})")
    torch_device = select_device(device)
    normalizer = Normalizer(loaded.card, torch_device)
    if backend == "onnx" and (torch_device.type != "cpu" or not onnx_available()):
        raise SlidescanError(
            "--backend onnx runs on the CPU and needs onnxruntime and onnx installed "
            "(pip install onnxruntime onnx)"
        )
    if backend == "onnx" or (backend == "auto" and torch_device.type == "cpu" and onnx_available()):
        return Predictor(OnnxModel(loaded.model), normalizer, torch_device)  # type: ignore[arg-type]
    return Predictor(prepare_model(loaded.model, torch_device), normalizer, torch_device)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device`` in channels-last layout and eval mode."""
    return model.to(device, memory_format=torch.channels_last).eval()


@torch.inference_mode()
def predict_logits(model: nn.Module, x: Tensor, *, tta: bool = False) -> Tensor:
    """Logits for a normalised batch; with ``tta`` the mean logit over the 8 dihedral transforms."""
    with autocast(x.device):
        if not tta:
            return model(x).float()
        return torch.stack([model(dihedral(x, k)).float() for k in range(8)]).mean(0)


def _undo_dihedral(y: Tensor, k: int) -> Tensor:
    out = torch.flip(y, dims=(-1,)) if k >= 4 else y
    return torch.rot90(out, -(k % 4), dims=(-2, -1))


@torch.inference_mode()
def predict_dense_probs(
    model: nn.Module, region: Tensor, normalizer: Normalizer, *, tta: bool = False
) -> Tensor:
    """Probability map (h, w) (CPU) of a fully convolutional model over one uint8 1×3×H×W region.

    With ``tta`` each of the 8 dihedral transforms is applied to the region and undone on the
    output map; regions of 96 + 32·k pixels map patch positions onto patch positions exactly.
    """
    x = normalizer(region)
    with autocast(x.device):
        if not tta:
            logits = model.forward_dense(x).float()
        else:
            maps = [
                _undo_dihedral(model.forward_dense(dihedral(x, k)).float(), k) for k in range(8)
            ]
            logits = torch.stack(maps).mean(0)
    return torch.sigmoid(logits[0]).cpu()


def predict_probs(
    model: nn.Module, batch: Tensor, normalizer: Normalizer, *, tta: bool = False
) -> Tensor:
    """Tumour probabilities (CPU float32) for a uint8 batch."""
    return torch.sigmoid(predict_logits(model, normalizer(batch), tta=tta)).cpu()


def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    normalizer: Normalizer,
    *,
    batch_size: int = 256,
    workers: int = 2,
    tta: bool = False,
    desc: str = "predict",
    progress: bool = True,
) -> np.ndarray:
    """Probabilities for every item of a (uint8 patch, label) dataset, in order."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory(normalizer.device),
        persistent_workers=False,
    )
    out = []
    for images, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        out.append(predict_probs(model, images, normalizer, tta=tta).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
