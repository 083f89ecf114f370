""" "A new lab": the whole adaptation loop on slides that look unlike PatchCamelyon.

    python benchmarks/new_lab.py [--out runs/new-lab] [--steps shipped,stain-reinhard,ft10,...] \
        [--weights runs/teacher-v2.pt]

The lab is one fixed, strong transform of every patch (implemented here, independently of the
training augmentation): haematoxylin ×1.8 and eosin ×0.45 (scikit-image HED), brightness −0.06,
hue turned by +0.08 (about 29°), Gaussian blur σ 0.8 px, JPEG quality 50. Under it:

- *training side*: 20 annotated mosaic slides of PCam ``train`` patches (14 with one lesion of
  0.5–3 mm, 6 all normal; 40×40 cells), their tumour outlined as QuPath GeoJSON;
- *test side*: 40 mosaics of PCam ``valid`` patches (slides the starting model must not have
  trained on: since 2026-12-06 the shipped model has, so pass ``--weights`` with the train-only
  model, git 07754a5, for unseen-slide figures): 20 normal, 10 micrometastases of 0.6–1.8 mm,
  10 macrometastases of 2.2–3 mm; truth.csv and annotations for ``slidescan validate``; and
  every ``valid`` patch under the transform, for patch AUC (``slidescan evaluate``).

Steps, each through the command line as a lab runs it: the starting model (``shipped``); with
``--stain-norm reinhard`` and ``macenko``; fine-tuned (``slidescan train --slides
--annotations``) on the first 5, 10 and 20 training slides. Per step: normal test slides called
positive, micro/macro slides with the right category, slide sensitivity/specificity, FROC
score, patch AUC, and times. Outputs are kept, so a rerun skips finished work. Prints one
Markdown table (benchmarks/RESULTS.md §11).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from data_paths import note_if_in_sample, shared_data_dir
from lesion_mosaics import load_patches
from mosaic_slides import image_mosaic, lesion_layout, write_slide
from mosaic_truth import tumour_area, write_geojson
from PIL import Image
from skimage.color import hed2rgb, hsv2rgb, rgb2hed, rgb2hsv
from skimage.filters import gaussian

from slidescan.engine.weights import PCAM_MPP, load_weights

CELLS = 40
TRAIN_SLIDES = 20
TEST_KINDS = {"normal": (20, (0.0, 0.0)), "micro": (10, (0.6, 1.8)), "macro": (10, (2.2, 3.0))}
EXPECTED = {"normal": "negative", "micro": "micrometastasis", "macro": "macrometastasis"}
PATCHES_PER_SLIDE = 800
VALID = shared_data_dir() / "pcam-jpeg" / "valid"  # the test side


def lab_transform(patches: np.ndarray) -> np.ndarray:
    """The new lab's look: uint8 (n, 96, 96, 3) → uint8, the same fixed transform for all."""
    hed = rgb2hed(patches)
    hed[..., 0] *= 1.8
    hed[..., 1] *= 0.45
    hsv = rgb2hsv(np.clip(hed2rgb(hed) - 0.06, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + 0.08) % 1.0
    rgb = hsv2rgb(hsv)
    out = np.empty_like(patches)
    for i, patch in enumerate(rgb):
        blurred = gaussian(patch, sigma=0.8, channel_axis=-1)
        buf = io.BytesIO()
        Image.fromarray(np.rint(blurred * 255).astype(np.uint8)).save(buf, "JPEG", quality=50)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def build(out: Path, seed: int) -> None:
    """Training and test slides, annotations, truth and shifted test patches (once)."""
    if (out / "built").exists():
        return
    rng = np.random.default_rng(seed)
    data = VALID.parent
    for split, folder in (("train", "train-slides"), ("valid", "test-slides")):
        x, y = load_patches(data / split)
        if split == "train":  # a sample is plenty for 20 slides and keeps the build short
            pick = rng.choice(len(x), size=6000, replace=False)
            x, y = x[pick], y[pick]
        x = lab_transform(x)
        normal, tumour = x[y == 0], x[y == 1]
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / f"{folder}-annotations").mkdir(exist_ok=True)
        if split == "valid":
            _write_patches(out / "test-patches", x, y)
        rows = []
        for name, diameter in _plan(split, rng):
            layout = lesion_layout(CELLS, diameter, rng, mpp=PCAM_MPP)
            write_slide(out / folder / name, image_mosaic(layout.truth, normal, tumour, rng))
            if diameter:
                write_geojson(
                    out / f"{folder}-annotations" / f"{Path(name).stem}.geojson",
                    tumour_area(layout.truth),
                )
            rows.append({"slide": name, "label": _label(diameter)})
        with open(out / f"{folder}.truth.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["slide", "label"])
            writer.writeheader()
            writer.writerows(rows)
    for n in (5, 10, 20):  # nested training sets: the first n slides
        sub = out / f"train-{n}"
        sub.mkdir(exist_ok=True)
        for slide in sorted((out / "train-slides").iterdir())[:n]:
            link = sub / slide.name
            if not link.exists():
                link.symlink_to(slide.resolve())
    (out / "built").touch()


def _plan(split: str, rng: np.random.Generator) -> list[tuple[str, float]]:
    if split == "train":
        sizes = [0.0] * 6 + list(rng.uniform(0.5, 3.0, TRAIN_SLIDES - 6))
        order = rng.permutation(TRAIN_SLIDES)  # every nested subset gets both kinds
        return [(f"lab-{i:02d}.tif", float(sizes[j])) for i, j in enumerate(order)]
    plan = []
    for kind, (count, (low, high)) in TEST_KINDS.items():
        plan += [(f"{kind}-{i:02d}.tif", float(rng.uniform(low, high))) for i in range(count)]
    return plan


def _label(diameter: float) -> str:
    return "negative" if diameter == 0 else "micro" if diameter <= 2.0 else "macro"


def _write_patches(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    for label in (0, 1):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for i, (patch, label) in enumerate(zip(x, y, strict=True)):
        Image.fromarray(patch).save(folder / str(int(label)) / f"{i:05d}.png")


def slidescan(*args: str | Path, log: Path, stdout: Path | None = None) -> float:
    """Run the installed command (messages to ``log``, its output to ``stdout`` or ``log``);
    its wall time, or exit on failure."""
    start = time.perf_counter()
    with open(log, "a") as fh, open(stdout or log, "a") as out:
        done = subprocess.run([sys.executable, "-m", "slidescan", *map(str, args)], stdout=out,
                              stderr=fh, check=False)  # fmt: skip
    if done.returncode:
        sys.exit(f"slidescan {' '.join(map(str, args))} failed; see {log}")
    return time.perf_counter() - start


def step(out: Path, name: str, base: Path | None = None) -> dict:
    """One step's figures (cached in ``out/<name>/figures.json``); ``base``: the model to start
    from (default: the shipped one)."""
    folder = out / name
    cached = folder / "figures.json"
    if cached.exists():
        return json.loads(cached.read_text())
    folder.mkdir(exist_ok=True)
    log = folder / "log.txt"
    figures: dict = {"step": name}
    options: list[str | Path] = [] if base is None else ["--weights", base]
    if name.startswith("ft"):
        n = int(name[2:])
        weights = folder / "model.pt"
        if not weights.exists():
            resume = ["--resume"] if (folder / "model.pt.resume").exists() else []
            figures["train_s"] = slidescan(
                "train", "--slides", out / f"train-{n}", "--annotations",
                out / "train-slides-annotations", "--out", weights, "--patches-per-slide",
                PATCHES_PER_SLIDE, *(["--init", base] if base else []), *resume, log=log,
            )  # fmt: skip
        options = ["--weights", weights]
    elif name.startswith("stain-"):
        options += ["--stain-norm", name.removeprefix("stain-")]
    results = folder / "results"
    figures["scan_s"] = slidescan("run", out / "test-slides", "--out", results, *options, log=log)
    slidescan("validate", results, "--truth", out / "test-slides.truth.csv", "--annotations",
              out / "test-slides-annotations", "--out", folder / "validation", log=log)  # fmt: skip
    v = json.loads((folder / "validation" / "validation.json").read_text())
    evaluation = folder / "evaluate.json"
    evaluation.unlink(missing_ok=True)
    # One pass, as the figures of RESULTS §11 were measured (patch commands now default to TTA).
    slidescan("evaluate", out / "test-patches", *options, "--no-tta", "--json", log=log,
              stdout=evaluation)  # fmt: skip
    figures["patch_auc"] = json.loads(evaluation.read_text())["auc"]
    calls = _calls(results)
    figures["normal_positive"] = sum(calls[f"normal-{i:02d}.tif"] != "negative" for i in range(20))
    for kind in ("micro", "macro"):
        figures[f"{kind}_right"] = sum(
            calls[f"{kind}-{i:02d}.tif"] == EXPECTED[kind] for i in range(10)
        )
    figures.update(sensitivity=v["sensitivity"]["value"], specificity=v["specificity"]["value"],
                   froc=v["froc"]["score"], slide_auc=v["slide_auc"]["value"])  # fmt: skip
    cached.write_text(json.dumps(figures, indent=1))
    return figures


def _calls(results: Path) -> dict[str, str]:
    with open(results / "summary.csv", newline="") as fh:
        return {row["slide"]: row["category"] for row in csv.DictReader(fh)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/new-lab"))
    parser.add_argument("--steps", default="shipped,stain-reinhard,stain-macenko,ft5,ft10,ft20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="the lab's starting model (default: the shipped one)",
    )
    args = parser.parse_args()
    note_if_in_sample(load_weights(args.weights).card.training, VALID)
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out, args.seed)
    print("| step | normal slides positive | micro right | macro right | sensitivity | "
          "specificity | FROC | patch AUC | fine-tune s | scan s |")  # fmt: skip
    print("|---|" + "---:|" * 9)
    for name in args.steps.split(","):
        f = step(args.out, name, args.weights)
        print(f"| {name} | {f['normal_positive']}/20 | {f['micro_right']}/10 | "
              f"{f['macro_right']}/10 | {f['sensitivity']:.3f} | {f['specificity']:.3f} | "
              f"{f['froc']:.3f} | {f['patch_auc']:.4f} | {f.get('train_s', 0):.0f} | "
              f"{f['scan_s']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
