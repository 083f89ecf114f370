"""CPU inference engines for the patch model, measured side by side in one run.

    python benchmarks/cpu_inference.py [--weights weights/pcamnet-v2.pt] [--batch 256] [--seconds 8]

Every variant turns the same uint8 batch into probabilities (normalisation included, as in a
scan): eager PyTorch NCHW under ``no_grad`` (how most scripts run a model); slidescan's torch
engine (channels-last, ``inference_mode``), also with 1 thread and under ``torch.compile``; and
slidescan's ONNX Runtime engines, float32 and int8 (``--backend onnx`` / ``onnx-int8``; the int8
graph is the one stored in the weights file). Prints patches/s, the ratio to the torch engine and
the largest probability difference from it. Accuracy of each engine: ``slidescan evaluate
--backend ...`` (benchmarks/RESULTS.md §2).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from slidescan.engine.inference import make_predictor, predict_probs
from slidescan.engine.weights import load_weights


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
    parser.add_argument("--weights", type=Path, default=None, help="default: shipped model")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    loaded = load_weights(args.weights)
    torch.manual_seed(0)
    # Pixel-like input: random uint8 around tissue colours (the values do not change speed).
    x = torch.randint(90, 256, (args.batch, 3, 96, 96), dtype=torch.uint8)

    torch_engine = make_predictor(loaded, "cpu", "torch")
    mean = torch.tensor(loaded.card.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.card.std).view(1, 3, 1, 1)
    plain = load_weights(args.weights).model.eval()

    def eager_nchw() -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(plain((x.float() / 255 - mean) / std))

    def engine(predictor: object) -> Callable[[], torch.Tensor]:
        return lambda: predict_probs(predictor.model, x, predictor.normalizer)  # type: ignore[attr-defined]

    reference = engine(torch_engine)()
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "eager NCHW, no_grad (plain script)": eager_nchw,
        "torch engine: channels-last, inference_mode": engine(torch_engine),
    }
    try:
        compiled = make_predictor(loaded, "cpu", "torch")
        compiled.model = torch.compile(compiled.model)
        compiled_run = engine(compiled)
        compiled_run()
        variants["torch engine + torch.compile"] = compiled_run
    except Exception as exc:  # no compiler toolchain: report, don't fail
        print(f"torch.compile unavailable: {str(exc).splitlines()[0]}")
    variants["ONNX Runtime float32 (--backend onnx)"] = engine(
        make_predictor(loaded, "cpu", "onnx")
    )
    if loaded.int8_onnx is not None:
        int8 = make_predictor(loaded, "cpu", "onnx-int8")
        variants["ONNX Runtime int8 (--backend onnx-int8, default)"] = engine(int8)
    else:
        print("weights carry no int8 engine (slidescan quantize): int8 row skipped")

    results = {name: rate(fn, args.batch, args.seconds) for name, fn in variants.items()}
    torch.set_num_threads(1)
    results["torch engine, 1 thread"] = rate(engine(torch_engine), args.batch, args.seconds)
    variants["torch engine, 1 thread"] = engine(torch_engine)
    torch.set_num_threads(threads)

    base = results["torch engine: channels-last, inference_mode"]
    print(
        f"\n{loaded.card.model}, batch {args.batch}, torch {torch.__version__}, {threads} threads\n"
    )
    print("| variant | patches/s | vs torch engine | max \\|Δp\\| vs torch engine |")
    print("|---|---:|---:|---:|")
    for name, value in results.items():
        diff = float((variants[name]() - reference).abs().max())
        print(f"| {name} | {value:,.0f} | {value / base:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
