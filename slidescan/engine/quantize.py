"""Add an int8 CPU engine to a weights file: calibrate on training patches, check agreement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from slidescan.engine.weights import LoadedModel
from slidescan.errors import SlidescanError
from slidescan.io.patches import PatchDataset


@dataclass
class Agreement:
    """How the int8 graph's probabilities compare with float32 on held-out patches."""

    patches: int
    mean_abs_diff: float
    max_abs_diff: float
    flipped: int  # patches whose call at the card's threshold changes

    def describe(self) -> str:
        """One line for the terminal."""
        return (
            f"int8 vs float32 on {self.patches} other patches: mean |Δp| "
            f"{self.mean_abs_diff:.4f}, max |Δp| {self.max_abs_diff:.4f}, "
            f"{self.flipped} call(s) changed at threshold"
        )


def quantize_weights(
    loaded: LoadedModel, dataset: PatchDataset, *, patches: int = 512, seed: int = 0
) -> tuple[bytes, Agreement]:
    """The int8 ONNX graph of ``loaded``, calibrated on ``patches`` random patches of
    ``dataset``, and its agreement with float32 on as many other patches."""
    from slidescan.engine.onnx_backend import OnnxModel, fp32_graph, onnx_available, quantize_int8

    if not onnx_available():
        raise SlidescanError("quantizing needs onnxruntime and onnx (pip install onnxruntime onnx)")
    if patches < 16:
        raise SlidescanError(f"patches must be at least 16, got {patches}", param="patches")
    n = len(dataset)
    if n < 2 * patches:
        patches = n // 2
        if patches < 16:
            what = getattr(dataset, "description", "training data")
            raise SlidescanError(f"{what}: too few patches to calibrate ({n})")
    order = np.random.default_rng(seed).permutation(n)

    def stack(indices: np.ndarray) -> torch.Tensor:
        return torch.stack([dataset[int(i)][0] for i in indices]).contiguous()

    calibration, held_out = stack(order[:patches]), stack(order[patches : 2 * patches])
    fp32 = fp32_graph(loaded)
    int8 = quantize_int8(fp32, calibration)
    fp32_model = OnnxModel(loaded.model, loaded.card, fp32)
    int8_model = OnnxModel(loaded.model, loaded.card, int8, int8=True)
    p32 = torch.sigmoid(fp32_model(held_out)).numpy()
    p8 = torch.sigmoid(int8_model(held_out)).numpy()
    threshold = loaded.card.threshold
    diff = np.abs(p8 - p32)
    agreement = Agreement(
        patches=len(held_out),
        mean_abs_diff=float(diff.mean()),
        max_abs_diff=float(diff.max()),
        flipped=int(((p8 >= threshold) != (p32 >= threshold)).sum()),
    )
    return int8, agreement
