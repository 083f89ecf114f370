"""Side-by-side comparison of trained patch models: validation metrics, size and CPU speed.

    python benchmarks/compare_models.py weights/pcamnet-v2.pt runs/seed-cnn.pt \
        [--data ../shared/data/pcam-jpeg] [--threads 2]

For each weights file: parameters, AUC (95% CI), accuracy, sensitivity, specificity on the
validation split at the model's own threshold, with and without 8-fold TTA, and model-only
throughput (patches/s, fp32, channels-last, batch 256, random input) measured in this same run so
the ratio between models is meaningful on a noisy shared machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from data_paths import shared_data_dir

from slidescan.engine.inference import prepare_model
from slidescan.engine.weights import load_weights
from slidescan.io.patches import open_patch_dataset
from slidescan.models import count_parameters
from slidescan.train.evaluation import evaluate


def model_throughput(model: torch.nn.Module, batch: int = 256, seconds: float = 10.0) -> float:
    """Patches per second of the model alone on CPU (random normalised input)."""
    model = prepare_model(model, torch.device("cpu"))
    x = torch.randn(batch, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up: allocator and oneDNN kernel selection
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "pcam-jpeg")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-tta", action="store_true", help="skip the (8× slower) TTA rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = open_patch_dataset(args.data, split=args.split)
    print(f"data: {dataset.description}; torch threads: {args.threads}\n")
    header = (
        "| model | params | TTA | AUC [95% CI] | accuracy | sensitivity | specificity "
        "| threshold | model-only patches/s (CPU) |"
    )
    print(header)
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for path in args.weights:
        loaded = load_weights(path)
        speed = model_throughput(loaded.model)
        for tta in (False,) if args.no_tta else (False, True):
            m = evaluate(loaded, dataset, tta=tta).metrics
            n_params = count_parameters(loaded.model)
            print(
                f"| {loaded.card.model} | {n_params:,} | {'8×' if tta else '—'} "
                f"| {m.auc:.4f} [{m.auc_ci[0]:.4f}, {m.auc_ci[1]:.4f}] | {m.accuracy:.4f} "
                f"| {m.sensitivity:.4f} | {m.specificity:.4f} | {m.threshold:.3f} "
                f"| {speed / (8 if tta else 1):,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
