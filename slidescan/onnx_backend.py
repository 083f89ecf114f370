"""ONNX Runtime as the CPU inference engine: same model, same numbers, faster on CPU.

The model is exported in memory when a scan starts (a second or so), so the weights file stays the
single source of truth. A fully convolutional model is exported from ``forward_dense`` with free
batch and spatial sizes, so one session serves both 96×96 patches and dense regions.
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import Tensor, nn


def onnx_available() -> bool:
    """True when onnxruntime (and onnx, needed to export) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Dense(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_dense(x)  # type: ignore[operator]


class OnnxModel:
    """Callable like the torch model it was exported from (``model(x)``, ``forward_dense``)."""

    def __init__(self, model: nn.Module, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.dense = hasattr(model, "forward_dense")
        if self.dense:
            self.dense_stride = model.dense_stride  # type: ignore[attr-defined]
        # A private eval-mode copy: the exporter restores the *wrapper's* training flag
        # recursively afterwards, which must not reach the caller's model.
        model = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format)
        module = (_Dense(model) if self.dense else model).eval()
        axes = {0: "n", 2: "h", 3: "w"} if self.dense else {0: "n"}
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter chatter about tracing, not our concern
            torch.onnx.export(
                module, (torch.zeros(1, 3, 96, 96),), buf, dynamo=False, input_names=["x"],
                output_names=["logits"], dynamic_axes={"x": axes},
            )  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(
            buf.getvalue(), options, providers=["CPUExecutionProvider"]
        )

    def _run(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {"x": x.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def forward_dense(self, x: Tensor) -> Tensor:
        """Logit map (N, h, w), as the torch model's ``forward_dense`` (exported from it)."""
        return self._run(x)

    def __call__(self, x: Tensor) -> Tensor:
        """Logits (N,) for 96×96 patches."""
        if tuple(x.shape[-2:]) != (96, 96):
            raise ValueError(f"expected 96×96 patches, got {tuple(x.shape[-2:])}")
        out = self._run(x)
        return out.flatten(1)[:, 0] if self.dense else out.reshape(-1)
