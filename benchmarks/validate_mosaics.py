"""`run --patients` → `validate --annotations` end to end on mosaic slides with known truth.

    python benchmarks/validate_mosaics.py [--weights W] [--cells 40] [--per-kind 4] [--out DIR]

Builds mosaic slides (``mosaic_slides.py``) from PatchCamelyon ``valid`` patches (slides the
shipped model was neither trained nor calibrated on): all-normal, ITC, micrometastases of
0.3–0.5 mm and 0.65 mm, macrometastases of 2.2 mm, ``--cells`` cells a side. Each mosaic gets its
label in truth.csv, a patient (three or four slides each) and its tumour outlined as QuPath GeoJSON
and ASAP XML. Then ``slidescan run slides/ --patients`` and ``slidescan validate`` (once per
annotation format) run as a lab would run them; the validation summary and detection by lesion
size are printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from data_paths import note_if_in_sample, shared_data_dir
from lesion_mosaics import load_patches
from mosaic_slides import image_mosaic, lesion_layout, write_slide
from mosaic_truth import truth_label, tumour_area, write_asap, write_geojson

from slidescan.engine.weights import load_weights

# Lesion diameters (mm) by kind; each kind gets --per-kind slides (normal: twice as many).
KINDS = {"normal": [0.0], "itc": [0.15], "micro-small": [0.3, 0.4, 0.5], "micro": [0.65],
         "macro": [2.2]}  # fmt: skip


def build(out: Path, cells: int, per_kind: int, seed: int, mpp: float) -> list[dict[str, str]]:
    """Write slides/, annotations/ (GeoJSON), annotations-asap/ (XML), truth.csv, patients.csv."""
    patches, labels = load_patches(shared_data_dir() / "pcam-jpeg" / "valid")
    normal, tumour = patches[labels == 0], patches[labels == 1]
    rng = np.random.default_rng(seed)
    for sub in ("slides", "annotations", "annotations-asap"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, diameters in KINDS.items():
        count = per_kind * (2 if kind == "normal" else 1)
        for i in range(count):
            diameter = diameters[i % len(diameters)]
            name = f"{kind}-{i:02d}.tif"
            layout = lesion_layout(cells, diameter, rng, mpp=mpp)
            slide = out / "slides" / name
            if not slide.exists():
                write_slide(slide, image_mosaic(layout.truth, normal, tumour, rng), mpp=mpp)
            area = tumour_area(layout.truth)
            write_geojson(out / "annotations" / f"{slide.stem}.geojson", area)
            write_asap(out / "annotations-asap" / f"{slide.stem}.xml", area)
            rows.append({"slide": name, "label": truth_label(diameter)})
    order = rng.permutation(len(rows))  # patients of 3–4 nodes, kinds mixed
    for rank, index in enumerate(order):
        rows[index]["patient"] = f"P{rank // 4 + 1:02d}" if rank < len(rows) - 3 else "P99"
    for name, columns in (("truth.csv", ("slide", "label", "patient")),
                          ("patients.csv", ("slide", "patient"))):  # fmt: skip
        with open(out / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return rows


def slidescan(*args: str | Path) -> float:
    """Run the installed command; return its wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slidescan", *map(str, args)], check=False,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--cells", type=int, default=40, help="mosaic side in cells")
    parser.add_argument("--per-kind", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/validate-mosaics"))
    parser.add_argument("--threshold", type=float, default=None, help="run --threshold (seed)")
    args = parser.parse_args()

    loaded = load_weights(args.weights)
    note_if_in_sample(loaded.card.training, shared_data_dir() / "pcam-jpeg" / "valid")
    rows = build(args.out, args.cells, args.per_kind, args.seed, loaded.card.mpp)
    weights = ["--weights", args.weights] if args.weights else []
    tag = "default" if args.threshold is None else f"seed{args.threshold}"
    results = args.out / f"results-{tag}"
    extra = [] if args.threshold is None else ["--threshold", str(args.threshold)]
    seconds = slidescan("run", args.out / "slides", "--out", results, "--patients",
                        args.out / "patients.csv", *weights, *extra)  # fmt: skip
    print(f"{loaded.card.model} ({loaded.sha256[:12]}); {len(rows)} mosaics of "
          f"{args.cells}×{args.cells} cells; run {seconds:.0f} s; seed threshold "
          f"{args.threshold or loaded.card.lesion_thresholds()[0]:.4f}\n")  # fmt: skip
    figures = {}
    for notes in ("annotations", "annotations-asap"):
        out = results / f"validation-{notes}"
        slidescan("validate", results, "--truth", args.out / "truth.csv", "--annotations",
                  args.out / notes, "--out", out)  # fmt: skip
        figures[notes] = json.loads((out / "validation.json").read_text())
    v = figures["annotations"]
    same = v["froc"] == figures["annotations-asap"]["froc"]
    fmt = lambda m: f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] ({m['count']})"  # noqa: E731
    print(f"- slide AUC {v['slide_auc']['value']:.3f}; sensitivity {fmt(v['sensitivity'])}; "
          f"specificity {fmt(v['specificity'])}; category kappa {v['kappa']:.3f}")  # fmt: skip
    froc = v["froc"]
    points = ", ".join(f"{k}: {s:.2f}" for k, s in froc["sensitivity_at_fp_per_slide"].items())
    print(f"- FROC score {froc['score']:.3f} over {froc['lesions']} lesions ({points}); "
          f"GeoJSON and ASAP XML give the same FROC: {same}")  # fmt: skip
    print(f"- patients: {len(v['patients']['rows'])}, pN kappa {v['patients']['kappa']:.3f}")
    print("\n| lesion size (mm) | lesions | detected |\n|---|---:|---:|")
    for band in v["detection_by_size"]:
        low, high = band["band_mm"]
        print(f"| {low}–{high if high is not None else '∞'} | {band['lesions']} | "
              f"{band['detected']} |")  # fmt: skip
    normal_fp = sum(d["truth"] == "negative" and d["call"] != "negative" for d in v["discordant"])
    normals = sum(r["label"] == "negative" for r in rows)
    print(f"\nnormal slides called positive (any lesion, ITC included): {normal_fp}/{normals}")


if __name__ == "__main__":
    main()
