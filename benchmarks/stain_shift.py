"""Stain-shift stress test: patch AUC under controlled colour, compression and focus shifts.

    python benchmarks/stain_shift.py weights/pcamnet-v2.pt runs/other.pt \
        [--data ../shared/data/pcam-jpeg] [--limit 1500] [--threads 2] [--tta]
    # patches both models held out of training (their training data, the first's card ids):
    python benchmarks/stain_shift.py a.pt b.pt --data ../shared/data/pcam-jpeg \
        ../shared/data/kaggle --split train --held-out-of a.pt

A proxy for slides from unseen labs and scanners: the validation patches are shifted at four
increasing strengths of each kind, and the AUC is measured at every strength. The shifts are
implemented independently of slidescan's training augmentation (scikit-image colour spaces,
Pillow JPEG), each patch drawing a random sign so that no model gains from one direction:

- ``hed``: haematoxylin and eosin concentrations (skimage ``rgb2hed``) scaled by 1 ± s;
- ``hsv``: hue turned by ± s turns, saturation scaled by 1 ± 5s;
- ``brightness``: ± s added to RGB in [0, 1];
- ``contrast``: contrast about the patch mean scaled by 1 ± s;
- ``jpeg``: re-encoded at quality q;
- ``blur``: Gaussian blur of σ px.

Prints one Markdown table: clean AUC, the AUC at each kind's strongest setting, and the mean AUC
over all 24 shifted conditions (the "stain-shift AUC" of ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from data_paths import note_if_in_sample, shared_data_dir
from PIL import Image
from skimage.color import hed2rgb, hsv2rgb, rgb2hed, rgb2hsv
from skimage.filters import gaussian
from torch.utils.data import Subset

from slidescan.engine.inference import make_predictor, predict_probs
from slidescan.engine.weights import load_weights
from slidescan.io.patches import open_patch_datasets
from slidescan.train.data_split import recorded_holdout_ids, split_by_ids
from slidescan.train.metrics import roc_auc

Shift = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=n)


def shift_hed(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    for i, patch in enumerate(x):
        hed = rgb2hed(patch)
        hed[..., 0] *= 1 + s * _signs(rng, 1)[0]
        hed[..., 1] *= 1 + s * _signs(rng, 1)[0]
        out[i] = hed2rgb(hed)
    return out


def shift_hsv(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    for i, patch in enumerate(x):
        hsv = rgb2hsv(patch)
        hsv[..., 0] = (hsv[..., 0] + s * _signs(rng, 1)[0]) % 1.0
        hsv[..., 1] = np.clip(hsv[..., 1] * (1 + 5 * s * _signs(rng, 1)[0]), 0, 1)
        out[i] = hsv2rgb(hsv)
    return out


def shift_brightness(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return x + (s * _signs(rng, len(x)))[:, None, None, None]


def shift_contrast(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (1 + s * _signs(rng, len(x)))[:, None, None, None] + mean


def shift_jpeg(x: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    for i, patch in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(_to_uint8(patch)).save(buf, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(buf).convert("RGB")) / 255.0
    return out


def shift_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.stack([gaussian(p, sigma=sigma, channel_axis=-1) for p in x])


SHIFTS: dict[str, tuple[Shift, tuple[float, ...]]] = {
    "hed": (shift_hed, (0.1, 0.2, 0.3, 0.4)),
    "hsv": (shift_hsv, (0.02, 0.04, 0.06, 0.08)),
    "brightness": (shift_brightness, (0.05, 0.1, 0.15, 0.2)),
    "contrast": (shift_contrast, (0.1, 0.2, 0.3, 0.4)),
    "jpeg": (shift_jpeg, (80, 60, 40, 20)),
    "blur": (shift_blur, (0.5, 1.0, 1.5, 2.0)),
}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def shifted_sets(patches: np.ndarray, seed: int = 0) -> dict[tuple[str, float], np.ndarray]:
    """uint8 (n, 96, 96, 3) patches under every (kind, strength), plus ("clean", 0)."""
    base = patches.astype(np.float64) / 255.0
    out = {("clean", 0.0): patches}
    for kind, (fn, strengths) in SHIFTS.items():
        for s in strengths:
            rng = np.random.default_rng(seed)
            out[(kind, s)] = _to_uint8(fn(base, s, rng))
    return out


def auc_table(
    weights: Path, sets: dict[tuple[str, float], np.ndarray], labels: np.ndarray, tta: bool = False
) -> dict:
    """AUC of one model on every shifted set (torch engine, CPU; ``tta``: the mean logit over
    the 8 flips/rotations, as the patch commands compute by default)."""
    loaded = load_weights(weights)
    predictor = make_predictor(loaded, "cpu", "torch")
    result = {}
    for key, x in sets.items():
        batch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        probs = np.concatenate(
            [
                predict_probs(
                    predictor.model, batch[i : i + 256], predictor.normalizer, tta=tta
                ).numpy()
                for i in range(0, len(batch), 256)
            ]
        )
        result[key] = roc_auc(labels, probs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, nargs="+", default=[shared_data_dir() / "pcam-jpeg"])
    parser.add_argument("--split", default="valid")
    parser.add_argument("--limit", type=int, default=1500, help="patches (half per class)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", action="store_true", help="mean over the 8 flips/rotations")
    parser.add_argument(
        "--held-out-of",
        type=Path,
        default=None,
        help="only the patches of --data this weights file held out of training",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    trained = {path: load_weights(path).card.training for path in args.weights}
    dataset = open_patch_datasets(args.data, split=args.split)
    description, index = dataset.description, np.arange(len(dataset))
    if args.held_out_of is not None:
        ids = recorded_holdout_ids(load_weights(args.held_out_of).card.training, "--held-out-of")
        for path, training in trained.items():  # one trained on any of them would be flattered
            if not set(ids) <= set(training.get("holdout_ids") or []):
                parser.error(f"{path} did not hold out the patches {args.held_out_of} held out")
        index = np.asarray(cast(Subset, split_by_ids(dataset, ids)[1]).indices)
        description += f", the {len(ids):,} patches {args.held_out_of.name} held out"
    labels_all = np.asarray(dataset.labels)[index]
    rng = np.random.default_rng(args.seed)
    pick = np.concatenate(
        [rng.permutation(np.flatnonzero(labels_all == c))[: args.limit // 2] for c in (0, 1)]
    )
    patches = np.stack([dataset[int(index[i])][0].permute(1, 2, 0).numpy() for i in pick])
    labels = labels_all[pick]
    sets = shifted_sets(patches, args.seed)
    if args.held_out_of is None:
        for path, training in trained.items():
            for folder in args.data:
                note_if_in_sample(training, folder / args.split, path.name)
    print(f"data: {description}; {len(pick)} patches; torch threads {args.threads}"
          f"{'; 8× TTA' if args.tta else ''}\n")  # fmt: skip

    kinds = list(SHIFTS)
    print(
        "| model | clean | "
        + " | ".join(f"{k} {SHIFTS[k][1][-1]:g}" for k in kinds)
        + " | mean shifted |"
    )
    print("|---|---:|" + "---:|" * len(kinds) + "---:|")
    detail = []
    for path in args.weights:
        aucs = auc_table(path, sets, labels, tta=args.tta)
        shifted = [v for (k, _), v in aucs.items() if k != "clean"]
        strongest = [aucs[(k, SHIFTS[k][1][-1])] for k in kinds]
        print(
            f"| {path.name} | {aucs[('clean', 0.0)]:.4f} | "
            + " | ".join(f"{v:.4f}" for v in strongest)
            + f" | {np.mean(shifted):.4f} |"
        )
        detail.append((path.name, aucs))
    print("\nAUC by strength (weakest → strongest):\n")
    for name, aucs in detail:
        for k in kinds:
            values = ", ".join(f"{s:g}: {aucs[(k, s)]:.4f}" for s in SHIFTS[k][1])
            print(f"- {name} {k}: {values}")


if __name__ == "__main__":
    main()
