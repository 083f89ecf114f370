"""CPU inference options for the patch model, measured side by side in one run.

    python benchmarks/cpu_inference.py [--model pcamnet-s] [--batch 256] [--seconds 8]

Variants: eager NCHW under ``no_grad``; eager channels-last under ``inference_mode`` (what
slidescan uses); the same with 1 thread; ``torch.compile``; ONNX Runtime (CPU provider, if the
``onnxruntime`` and ``onnx`` packages are installed). Prints patches/s and the ratio to
slidescan's default. Random weights: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import numpy as np
import torch

from slidescan.models import create_model


def rate(fn: Callable[[], object], batch: int, seconds: float) -> float:
    """Patches per second of ``fn`` (one batch per call) after a warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pcamnet-s")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    x = torch.randn(args.batch, 3, 96, 96)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    model_cl = create_model(args.model).eval().to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())

    def eager_nchw() -> object:
        with torch.no_grad():
            return model(x)

    def eager_cl() -> object:
        with torch.inference_mode():
            return model_cl(x_cl)

    results: dict[str, float] = {}
    results["eager NCHW, no_grad"] = rate(eager_nchw, args.batch, args.seconds)
    results["eager channels-last, inference_mode (default)"] = rate(
        eager_cl, args.batch, args.seconds
    )
    torch.set_num_threads(1)
    results["default, 1 thread"] = rate(eager_cl, args.batch, args.seconds)
    torch.set_num_threads(threads)
    try:
        compiled = torch.compile(model_cl)

        def run_compiled() -> object:
            with torch.inference_mode():
                return compiled(x_cl)

        results["torch.compile (channels-last)"] = rate(run_compiled, args.batch, args.seconds)
    except Exception as exc:  # no compiler toolchain: report, don't fail
        print(f"torch.compile unavailable: {exc}")
    try:
        import onnxruntime as ort

        buf = io.BytesIO()
        torch.onnx.export(
            model, (x[:1],), buf, dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )  # fmt: skip
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        x_np = x.numpy()
        ref = eager_nchw()
        out = session.run(None, {"x": x_np})[0]
        diff = float(np.abs(out - ref.numpy()).max())  # type: ignore[attr-defined]
        results[f"ONNX Runtime {ort.__version__} (max |Δlogit| {diff:.1e})"] = rate(
            lambda: session.run(None, {"x": x_np}), args.batch, args.seconds
        )
    except ImportError:
        print("ONNX Runtime not installed (pip install onnxruntime onnx): skipped")

    base = results["eager channels-last, inference_mode (default)"]
    print(f"\n{args.model}, batch {args.batch}, torch {torch.__version__}, {threads} threads\n")
    print("| variant | patches/s | vs default |")
    print("|---|---:|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:,.0f} | {value / base:.2f}× |")


if __name__ == "__main__":
    main()
