"""ONNX Runtime as the CPU inference engine: same model, faster on CPU.

Two graphs: float32, exported in memory when a scan starts (a second or so) and equal to torch
to float rounding; and int8 (:func:`quantize_int8`), built once from calibration patches and
stored inside the weights file, 2–3× faster again on CPUs with no loss of AUC (see
``benchmarks/RESULTS.md``). A fully convolutional model is exported from ``forward_dense`` with
free batch and spatial sizes, so one session serves both 96×96 patches and dense regions.
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slidescan.engine.weights import LoadedModel, ModelCard
from slidescan.errors import SlidescanError, one_line

CALIBRATION_BATCH = 64


def onnx_available() -> bool:
    """True when onnxruntime (and onnx, needed to export) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Exported(nn.Module):
    """uint8 pixels in, logits out: normalisation runs inside the graph, so no torch op (and no
    second thread pool) sits between the DataLoader and ONNX Runtime."""

    offset: Tensor
    scale: Tensor

    def __init__(self, model: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.model = model
        self.dense = hasattr(model, "forward_dense")
        mean = torch.tensor(card.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(card.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("offset", mean * 255.0)
        self.register_buffer("scale", 1.0 / (std * 255.0))

    def forward(self, x: Tensor) -> Tensor:
        x = (x.float() - self.offset) * self.scale
        return self.model.forward_dense(x) if self.dense else self.model(x)  # type: ignore[operator]


def export_onnx(model: nn.Module, card: ModelCard) -> bytes:
    """Float32 ONNX graph of ``model`` on uint8 N×3×H×W (H, W free if fully convolutional)."""
    # A private eval-mode copy: the exporter restores the *wrapper's* training flag
    # recursively afterwards, which must not reach the caller's model.
    model = copy.deepcopy(model).float().to("cpu")
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    module = _Exported(model, card).eval()
    axes = {0: "n", 2: "h", 3: "w"} if module.dense else {0: "n"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter about tracing, not our concern
        torch.onnx.export(
            module, (torch.zeros(1, 3, card.input_size, card.input_size, dtype=torch.uint8),),
            buf,  # type: ignore[arg-type]  # (stubs say path only; a file object works)
            dynamo=False, input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": axes},
        )  # fmt: skip
    return buf.getvalue()


def fp32_graph(loaded: LoadedModel) -> bytes:
    """``loaded``'s float32 graph, exported on first use (~0.4 s) and kept on it, so processes
    forked or pickled afterwards (scan workers) reuse it instead of exporting again."""
    if loaded.fp32_onnx is None:
        loaded.fp32_onnx = export_onnx(loaded.model, loaded.card)
    return loaded.fp32_onnx


def quantize_int8(fp32: bytes, calibration: Tensor) -> bytes:
    """An int8 ONNX graph from a float32 one (QDQ, per-channel weights, uint8 activations).

    ``calibration``: uint8 N×3×P×P patches like those the model will see (a few hundred from
    its training set); their activation ranges fix the int8 scales.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [
        {"x": calibration[i : i + CALIBRATION_BATCH].numpy()}
        for i in range(0, len(calibration), CALIBRATION_BATCH)
    ]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        quant_pre_process(src, pre)
        quantize_static(
            pre, out, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            # The layer that makes the logit stays float: quantising it made probabilities
            # coarse (pcamnet-s: 72 tiles of a slide took 50 distinct values).
            nodes_to_exclude=[_output_layer(pre)],
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            # 7-bit weights: x86 CPUs without VNNI multiply u8×s8 pairs into saturating int16;
            # this avoids that on every CPU (same AUC and speed on this VNNI host).
            reduce_range=True,
        )  # fmt: skip
        return out.read_bytes()


def _output_layer(path: Path) -> str:
    """Name of the last weighted node (Conv/Gemm/MatMul) before the graph's output."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    name = graph.output[0].name
    while name in producer:
        node = producer[name]
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            return node.name
        name = node.input[0]
    raise ValueError("no weighted layer found before the ONNX graph's output")


class OnnxModel:
    """Callable like the torch model it came from (``model(x)``, ``forward_dense``), but fed
    uint8 pixels: the graph normalises them itself (see :class:`_Exported`)."""

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        graph: bytes,
        *,
        int8: bool = False,
        threads: int | None = None,
    ) -> None:
        """``graph``: exported from ``model`` (:func:`fp32_graph`) or its int8 version."""
        import onnxruntime as ort

        self.dense = hasattr(model, "forward_dense")
        if self.dense:
            self.dense_stride = model.dense_stride  # type: ignore[attr-defined]
        self.precision = "int8" if int8 else "fp32"
        self.input_size = card.input_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # Batch and region sizes vary; a memory pattern cached per shape only grew memory.
        options.enable_mem_pattern = False
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a damaged graph
            raise SlidescanError(
                f"cannot load the {self.precision} ONNX model: {one_line(exc)} "
                "(use the torch backend, or re-add the int8 engine with `slidescan quantize`)",
                param="backend",
            ) from exc

    def _run(self, x: Tensor) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"the ONNX model takes uint8 pixels, got {x.dtype}")
        out = self.session.run(None, {"x": x.detach().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def forward_dense(self, x: Tensor) -> Tensor:
        """Logit map (N, h, w), as the torch model's ``forward_dense`` (exported from it)."""
        return self._run(x)

    def __call__(self, x: Tensor) -> Tensor:
        """Logits (N,) for patches of the model's input size."""
        size = self.input_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"expected {size}×{size} patches, got {tuple(x.shape[-2:])}")
        out = self._run(x)
        return out.flatten(1)[:, 0] if self.dense else out.reshape(-1)
