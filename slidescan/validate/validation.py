"""``slidescan validate``: a finished run against a lab's truth, slide, lesion and patient level."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidescan.about import RESEARCH_USE_NOTICE
from slidescan.batch.pn_stage import PN_STAGES, pn_stage
from slidescan.errors import SlidescanError
from slidescan.io.annotations import (
    DEFAULT_TUMOUR_CLASSES,
    find_annotation,
    read_annotations,
)
from slidescan.report.slide_report import SlideReport, read_slide_report
from slidescan.train.metrics import auc_with_ci
from slidescan.validate.froc import (
    Detection,
    SlideLesions,
    detection_by_size,
    froc,
    lesion_regions,
    match_detections,
)
from slidescan.validate.operating_point import operating_point, operating_point_text
from slidescan.validate.slide_metrics import (
    SLIDE_SCORE_RULE,
    category_agreement,
    quadratic_kappa,
    slide_score,
    wilson,
)
from slidescan.validate.truth import SlideTruth, read_truth

DONE = ("done", "redone", "skipped", "recalled")
VALIDATION_NAME = "validation.json"


@dataclass(frozen=True)
class RunResults:
    """A finished run's reports by slide name, and the slides it could not give a result for."""

    reports: dict[str, SlideReport]
    failed: list[str]


def read_results(folder: Path) -> RunResults:
    """The reports of a run's output folder (its ``summary.csv``, else every ``*.json`` report)."""
    if not folder.is_dir():
        raise SlidescanError(f"{folder}: no such results folder")
    summary = folder / "summary.csv"
    reports: dict[str, SlideReport] = {}
    failed: list[str] = []
    if summary.is_file():
        with open(summary, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("status") in DONE and row.get("heatmap"):
                    path = folder / Path(row["heatmap"]).with_suffix(".json")
                    reports[row["slide"]] = read_slide_report(path)
                else:
                    failed.append(row["slide"])
    else:
        for path in sorted(folder.rglob("*.json")):
            if path.with_suffix(".zarr").exists():
                report = read_slide_report(path)
                key = path.parent.relative_to(folder) / Path(report.slide).name
                reports[key.as_posix()] = report
    if not reports and not failed:
        raise SlidescanError(f"{folder}: no slide results (summary.csv or X.json reports)")
    return RunResults(reports, failed)


def validate(
    results: Path,
    truth_csv: Path,
    annotations: Path | None = None,
    tumour_classes: tuple[str, ...] = DEFAULT_TUMOUR_CLASSES,
) -> dict[str, Any]:
    """Compare a run with the truth; the returned dict is what ``validation.json`` holds."""
    run, truth = read_results(results), read_truth(truth_csv)
    named = set(run.reports) | set(run.failed)
    _refuse_mismatch(sorted(set(truth) - named), "in the truth but not in the results")
    _refuse_mismatch(sorted(named - set(truth)), "in the results but not in the truth")
    if annotations is not None and not annotations.is_dir():
        raise SlidescanError(f"{annotations}: no such annotations folder")
    slides = sorted(run.reports)
    if not slides:
        raise SlidescanError(f"{results}: every slide failed; nothing to validate")
    out: dict[str, Any] = {
        "notice": RESEARCH_USE_NOTICE,
        "slides": len(slides),
        "failed": sorted(run.failed),
        "slide_score": SLIDE_SCORE_RULE,
        "positive_call": "micrometastasis or macrometastasis",
        "operating_point": operating_point(run.reports.values()),
    }
    out.update(_slide_level(slides, run.reports, truth))
    if annotations is not None:
        out.update(_lesion_level(slides, run.reports, truth, annotations, tumour_classes))
    if any(t.patient for t in truth.values()):
        out["patients"] = _patient_level(run, truth)
    return out


def _refuse_mismatch(names: list[str], where: str) -> None:
    if names:
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        raise SlidescanError(f"{len(names)} slides {where}: {', '.join(names[:3])}{more}")


def _slide_level(
    slides: list[str], reports: dict[str, SlideReport], truth: dict[str, SlideTruth]
) -> dict[str, Any]:
    y = np.array([truth[s].positive for s in slides], dtype=int)
    called = np.array([reports[s].call.positive for s in slides], dtype=bool)
    scores = np.array([slide_score(reports[s]) for s in slides])
    auc, ci = auc_with_ci(y, scores, n_bootstrap=2000)
    tp, tn = int((called & (y == 1)).sum()), int((~called & (y == 0)).sum())
    categorical = [s for s in slides if truth[s].category is not None]
    agreement = category_agreement(
        [str(truth[s].category) for s in categorical],
        [reports[s].call.category for s in categorical],
    )
    discordant = [
        {"slide": s, "truth": truth[s].category or ("tumor" if truth[s].positive else "normal"),
         "call": reports[s].call.category, "score": round(float(scores[i]), 4),
         "reliable": reports[s].reliable}
        for i, s in enumerate(slides)
        if (truth[s].category is not None and truth[s].category != reports[s].call.category)
        or (truth[s].category is None and truth[s].positive != bool(called[i]))
    ]  # fmt: skip
    return {
        "slide_auc": {"value": None if np.isnan(auc) else auc,
                      "ci": [None if np.isnan(v) else v for v in ci]},
        "sensitivity": wilson(tp, int(y.sum())),
        "specificity": wilson(tn, int((y == 0).sum())),
        "accuracy": wilson(tp + tn, len(slides)),
        "kappa": agreement["kappa"],
        "confusion": {"labels": agreement["labels"], "matrix": agreement["matrix"],
                      "rows": "truth", "columns": "call", "slides": agreement["n"]},
        "discordant": discordant,
        "roc_points": {"truth": y.tolist(), "score": scores.round(6).tolist()},
    }  # fmt: skip


def _lesion_level(
    slides: list[str],
    reports: dict[str, SlideReport],
    truth: dict[str, SlideTruth],
    folder: Path,
    tumour_classes: tuple[str, ...],
) -> dict[str, Any]:
    matched: list[SlideLesions] = []
    skipped = []
    for slide in slides:
        report, path = reports[slide], find_annotation(folder, slide)
        if path is None and truth[slide].positive:
            skipped.append(slide)  # a positive slide without its outlines cannot be scored
            continue
        mpp = float(report.attributes["slide_mpp"])
        regions, offset = [], (0.0, 0.0)
        if path is not None:
            notes = read_annotations(path, tumour_classes)
            regions = lesion_regions(notes.tumour, mpp)
            if notes.bounds_relative:
                origin = report.attributes.get("slide_bounds_origin_level0", [0, 0])
                offset = (float(origin[0]), float(origin[1]))
        detections = [
            Detection(lesion.centroid_level0[0] - offset[0], lesion.centroid_level0[1] - offset[1],
                      lesion.max_probability, lesion.diameter_mm)
            for lesion in report.call.lesions
        ]  # fmt: skip
        matched.append(match_detections(slide, regions, detections))
    curve = froc(matched)
    lesions = [
        {"slide": sl.slide, "true_diameter_mm": round(region.diameter_mm, 3), "itc": region.itc,
         "detected": hit is not None, "measured_diameter_mm": diameter}
        for sl in matched
        for region, hit, diameter in zip(sl.regions, sl.hit_scores, sl.hit_diameters, strict=True)
    ]  # fmt: skip
    return {
        "froc": {
            "score": None if np.isnan(curve.score) else curve.score,
            "sensitivity_at_fp_per_slide": {str(k): v for k, v in curve.at_rates.items()},
            "lesions": curve.lesions, "slides": curve.slides,
            "curve": {"fp_per_slide": list(curve.fps_per_slide),
                      "sensitivity": list(curve.sensitivity)},
            "skipped_positive_slides_without_annotations": skipped,
        },
        "lesions": lesions,
        "detection_by_size": detection_by_size(matched),
    }  # fmt: skip


def _patient_level(run: RunResults, truth: dict[str, SlideTruth]) -> dict[str, Any]:
    by_patient: dict[str, list[str]] = {}
    for slide, t in truth.items():
        if t.patient:
            by_patient.setdefault(t.patient, []).append(slide)
    rows, true_idx, called_idx = [], [], []
    for patient in sorted(by_patient):
        slides = sorted(by_patient[patient])
        if any(truth[s].category is None for s in slides):
            continue  # a stage needs each node's category
        true_stage = pn_stage(str(truth[s].category) for s in slides)
        scanned = [s for s in slides if s in run.reports]
        called_stage = pn_stage(run.reports[s].call.category for s in scanned)
        incomplete = len(scanned) < len(slides)
        unreliable = any(not run.reports[s].reliable for s in scanned)
        rows.append({"patient": patient, "truth": true_stage, "called": called_stage,
                     "incomplete": incomplete, "unreliable": unreliable})  # fmt: skip
        true_idx.append(PN_STAGES.index(true_stage))
        called_idx.append(PN_STAGES.index(called_stage))
    kappa = quadratic_kappa(np.array(true_idx), np.array(called_idx), len(PN_STAGES))
    return {"kappa": kappa, "stages": list(PN_STAGES), "rows": rows}


def write_validation(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``validation.json``, the ROC / FROC / confusion figures and ``validation.html``."""
    from slidescan.validate.validation_report import write_figures_and_page

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / VALIDATION_NAME
    path.write_text(json.dumps(result, indent=2) + "\n")
    return [path, *write_figures_and_page(result, out_dir)]


def describe_validation(result: dict[str, Any]) -> str:
    """The terminal summary."""

    def prop(key: str) -> str:
        m = result[key]
        if m["value"] is None:
            return f"{key} n/a"
        return f"{key} {m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] ({m['count']})"

    auc = result["slide_auc"]
    auc_text = "n/a" if auc["value"] is None else (
        f"{auc['value']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}]"
        if auc["ci"][0] is not None else f"{auc['value']:.3f}"
    )  # fmt: skip
    lines = [
        f"slides {result['slides']}" + (f", {len(result['failed'])} failed (not counted)"
                                        if result["failed"] else ""),
        f"operating point: {operating_point_text(result['operating_point'])}",
        f"slide AUC {auc_text}; " + "; ".join(prop(k) for k in ("sensitivity", "specificity",
                                                                 "accuracy")),
    ]  # fmt: skip
    if result["kappa"] is not None:
        lines.append(f"category kappa (quadratic) {result['kappa']:.3f} over "
                     f"{result['confusion']['slides']} slides")  # fmt: skip
    if "froc" in result and result["froc"]["score"] is not None:
        f = result["froc"]
        points = ", ".join(f"{k}: {v:.2f}" for k, v in f["sensitivity_at_fp_per_slide"].items())
        lines.append(f"FROC score {f['score']:.3f} over {f['lesions']} lesions (sensitivity at "
                     f"FP/slide {points})")  # fmt: skip
    if "patients" in result and result["patients"]["kappa"] is not None:
        p = result["patients"]
        lines.append(f"patients {len(p['rows'])}: pN stage kappa (quadratic) {p['kappa']:.3f}")
    for d in result["discordant"][:10]:
        lines.append(f"  discordant: {d['slide']}: truth {d['truth']}, called {d['call']}")
    lines.append("Research use only.")
    return "\n".join(lines)
