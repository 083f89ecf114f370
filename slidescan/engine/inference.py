"""Run a patch model over uint8 batches on a device: where pixels become probabilities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from slidescan.engine.augment import dihedral
from slidescan.engine.device import autocast, pin_memory, select_device
from slidescan.engine.weights import LoadedModel, ModelCard
from slidescan.errors import SlidescanError
from slidescan.progress import progress as progress_bar
from slidescan.vocabulary import Backend


class Normalizer:
    """uint8 N×3×H×W on the host → normalised float on ``device`` (channels-last: fastest).

    ``in_model``: the model normalises uint8 pixels itself (the ONNX graphs), so batches pass
    through untouched.
    """

    def __init__(self, card: ModelCard, device: torch.device, *, in_model: bool = False) -> None:
        self.device = device
        self.in_model = in_model
        self.mean = torch.tensor(card.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(card.std, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: Tensor, augment: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Normalise ``batch``; ``augment`` (training only) acts on float RGB in [0, 1] first."""
        if self.in_model:
            if augment is not None:
                raise ValueError("augmentation needs a normalising Normalizer, not in_model")
            return batch
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
    engine: str = "torch"  # torch, onnx or onnx-int8: recorded in reports


BACKENDS = tuple(Backend)


class DenseModel(Protocol):
    """A fully convolutional model: a logit map for a region (see ``pcamnet.forward_dense``)."""

    def forward_dense(self, x: Tensor) -> Tensor: ...


def resolve_backend(loaded: LoadedModel, device: torch.device, backend: str) -> str:
    """The engine ``backend`` means for this model on this device (``auto`` resolved)."""
    from slidescan.engine.onnx_backend import onnx_available

    if backend not in BACKENDS:
        raise SlidescanError(
            f"unknown backend {backend!r} (use {', '.join(BACKENDS)})", param="backend"
        )
    if backend == "auto":
        if device.type != "cpu" or not onnx_available():
            return "torch"
        return "onnx-int8" if loaded.int8_onnx is not None else "onnx"
    if backend.startswith("onnx") and (device.type != "cpu" or not onnx_available()):
        raise SlidescanError(
            f"backend {backend!r} runs on the CPU and needs onnxruntime and onnx installed "
            "(pip install onnxruntime onnx)",
            param="backend",
        )
    if backend == "onnx-int8" and loaded.int8_onnx is None:
        raise SlidescanError(
            "backend 'onnx-int8': these weights carry no int8 model; add one with "
            "`slidescan quantize` (engine.quantize.quantize_weights)",
            param="backend",
        )
    return backend


def make_predictor(
    loaded: LoadedModel, device: str = "auto", backend: str = "auto", *, threads: int | None = None
) -> Predictor:
    """Put ``loaded`` on ``device`` (auto: cuda > mps > cpu), ready for inference.

    ``backend``: ``torch``; ``onnx`` (ONNX Runtime float32, CPU only, torch's numbers to float
    rounding); ``onnx-int8`` (the int8 graph stored in the weights file, CPU only); ``auto`` =
    onnx-int8 on the CPU when the weights carry it, else onnx, and torch on GPUs. Speeds and
    accuracy of each: benchmarks/RESULTS.md. ``threads``: ONNX Runtime's thread count (default:
    torch's); the torch engine uses the process's torch threads.
    """
    from slidescan.engine.onnx_backend import OnnxModel, fp32_graph

    torch_device = select_device(device)
    engine = resolve_backend(loaded, torch_device, backend)
    if engine.startswith("onnx"):
        int8 = engine == "onnx-int8"
        graph = loaded.int8_onnx if int8 else fp32_graph(loaded)
        assert graph is not None  # resolve_backend checked that the int8 graph exists
        onnx_model = OnnxModel(loaded.model, loaded.card, graph, int8=int8, threads=threads)
        normalizer = Normalizer(loaded.card, torch_device, in_model=True)
        return Predictor(onnx_model, normalizer, torch_device, engine)  # type: ignore[arg-type]
    model = prepare_model(loaded.model, torch_device)
    return Predictor(model, Normalizer(loaded.card, torch_device), torch_device, engine)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device`` in channels-last layout and eval mode."""
    return model.to(device).to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]


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
    dense = cast(DenseModel, model).forward_dense
    with autocast(x.device):
        if not tta:
            logits = dense(x).float()
        else:
            maps = [_undo_dihedral(dense(dihedral(x, k)).float(), k) for k in range(8)]
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
    for images, _ in progress_bar(loader, desc=desc, unit="batch", leave=False, show=progress):
        out.append(predict_probs(model, images, normalizer, tta=tta).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
