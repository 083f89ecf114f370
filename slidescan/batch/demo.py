"""`slidescan demo`: scan the small slide shipped inside the package and check the call against
its known truth, so a newcomer sees every output (heatmap, call, overlay, QuPath annotations,
review page) with nothing but pip.

The demo slide and its truth are built by ``examples/make_demo_slide.py`` from PatchCamelyon
*valid* patches (CC0); see ``slidescan/demo_data/README.md``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from slidescan.batch.directory import scan_directory
from slidescan.errors import SlidescanError
from slidescan.io.outputs import SlideOutputs, read_report
from slidescan.report.outcome import SlideOutcome
from slidescan.scan.scan_result import ScanOptions, ScanResult
from slidescan.vocabulary import SlideStatus

DEMO_SLIDE = "demo-node.tif"
DEMO_TRUTH = "demo-node.truth.json"


def demo_folder() -> Path:
    """The installed folder holding the demo slide, its truth and its README."""
    return Path(str(resources.files("slidescan") / "demo_data"))


def read_truth() -> dict[str, Any]:
    """What the demo slide holds: the expected call and each lesion's category, size, centre."""
    path = demo_folder() / DEMO_TRUTH
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SlidescanError(f"{path}: demo truth missing or unreadable ({reason})") from None


@dataclass(frozen=True)
class LesionMatch:
    """One true lesion and the reported lesion nearest to it (None: not found)."""

    category: str
    diameter_mm: float
    found_category: str | None
    found_diameter_mm: float | None
    offset_mm: float | None  # distance between the true centre and the reported centroid

    @property
    def right(self) -> bool:
        """Found, and put in the right pN category."""
        return self.found_category == self.category


@dataclass(frozen=True)
class DemoResult:
    """The demo's outcome, the report it produced and how both compare with the truth."""

    outcome: SlideOutcome
    out_dir: Path
    outputs: SlideOutputs
    report: dict[str, Any]
    truth: dict[str, Any]
    lesions: tuple[LesionMatch, ...]
    extra_lesions: int  # reported lesions that match no true lesion

    @property
    def call_right(self) -> bool:
        """The slide call (positive, category) is the true one."""
        call, expected = self.report["call"], self.truth["call"]
        return bool(call["positive"] == expected["positive"]) and (
            call["category"] == expected["category"]
        )

    @property
    def right(self) -> bool:
        """Call right, every lesion found in its category, nothing else reported."""
        return self.call_right and all(m.right for m in self.lesions) and not self.extra_lesions


def match_lesions(
    reported: list[dict[str, Any]], truth: dict[str, Any]
) -> tuple[tuple[LesionMatch, ...], int]:
    """Pair each true lesion with the nearest reported one whose centroid lies within its radius
    plus 0.2 mm; returns the pairs and how many reported lesions were left unpaired."""
    mpp = float(truth["mpp"])
    left = list(range(len(reported)))
    matches = []
    for lesion in truth["lesions"]:
        tx, ty = lesion["centre_level0"]
        best, best_mm = None, math.inf
        for i in left:
            x, y = reported[i]["centroid_level0"]
            dist_mm = math.hypot(x - tx, y - ty) * mpp / 1000.0
            if dist_mm < best_mm:
                best, best_mm = i, dist_mm
        if best is not None and best_mm <= lesion["diameter_mm"] / 2 + 0.2:
            left.remove(best)
            found = reported[best]
            matches.append(
                LesionMatch(
                    lesion["category"],
                    lesion["diameter_mm"],
                    found["category"],
                    found["diameter_mm"],
                    best_mm,
                )  # fmt: skip
            )
        else:
            matches.append(LesionMatch(lesion["category"], lesion["diameter_mm"], None, None, None))
    return tuple(matches), len(left)


TRUTH_CSV = "truth.csv"
TRUTH_LABELS = {"negative": "negative", "itc": "itc", "micrometastasis": "micro",
                "macrometastasis": "macro"}  # fmt: skip


def write_demo_truth(out_dir: Path, truth: dict[str, Any]) -> tuple[Path, Path]:
    """The demo's truth as a lab would give it to ``slidescan validate``: ``truth.csv`` and
    ``annotations/<slide>.geojson`` (its lesions as QuPath tumour discs)."""
    from shapely.geometry import Point, mapping

    truth_csv = out_dir / TRUTH_CSV
    truth_csv.write_text(
        f"slide,label\n{truth['slide']},{TRUTH_LABELS[truth['call']['category']]}\n"
    )
    folder = out_dir / "annotations"
    folder.mkdir(exist_ok=True)
    features = [
        {"type": "Feature",
         "geometry": mapping(Point(*lesion["centre_level0"]).buffer(
             lesion["diameter_mm"] * 500.0 / truth["mpp"], quad_segs=16)),
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}
        for lesion in truth["lesions"]
    ]  # fmt: skip
    geojson = {"type": "FeatureCollection", "features": features}
    (folder / f"{Path(truth['slide']).stem}.geojson").write_text(json.dumps(geojson) + "\n")
    return truth_csv, folder


def check_demo_folder(out_dir: Path) -> None:
    """Refuse an output folder that holds anything but an earlier demo: the demo rewrites
    summary.csv and index.html, which would wipe another batch's."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SlidescanError(f"{out_dir}: the demo needs a folder, and this is a file", param="out")
    if not out_dir.is_dir():
        return
    stem = Path(DEMO_SLIDE).stem
    ours = {"summary.csv", "index.html", "slidescan.log", TRUTH_CSV, "annotations", "validation"}
    foreign = sorted(
        p.name
        for p in out_dir.iterdir()
        if p.name not in ours and not p.name.startswith(".") and Path(p.name).stem != stem
    )
    if foreign:
        raise SlidescanError(
            f"{out_dir}: holds other results ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder",
            param="out",
        )


def run_demo(
    out_dir: Path,
    *,
    weights: Path | None = None,
    options: ScanOptions | None = None,
    on_result: Callable[[ScanResult], None] | None = None,
) -> DemoResult:
    """Scan the demo slide into ``out_dir`` with an overlay and the review page, then compare
    its call with the truth. A finished demo with the same settings is reused."""
    truth = read_truth()
    slide = demo_folder() / DEMO_SLIDE
    if not slide.is_file():
        raise SlidescanError(f"{slide}: the demo slide is missing from this installation")
    check_demo_folder(out_dir)
    # A copy beside the outputs: QuPath opens it from there, not from inside the installation.
    out_dir.mkdir(parents=True, exist_ok=True)
    copy = out_dir / DEMO_SLIDE
    if not copy.is_file() or copy.stat().st_size != slide.stat().st_size:
        shutil.copyfile(slide, copy)
    slide = copy
    (outcome,) = scan_directory(
        [slide], out_dir, weights=weights, options=options, overlay_dir=out_dir,
        on_result=on_result,
    )  # fmt: skip
    if outcome.status == SlideStatus.failed:
        raise SlidescanError(f"the demo scan failed: {outcome.error}")
    if outcome.status == SlideStatus.busy:
        raise SlidescanError(
            f"{out_dir}: another demo is writing there; wait for it or choose another folder",
            param="out",
        )
    outputs = SlideOutputs.in_folder(slide, out_dir, out_dir)
    report = read_report(outputs.heatmap)
    lesions, extra = match_lesions(report["call"]["lesions"], truth)
    return DemoResult(outcome, out_dir, outputs, report, truth, lesions, extra)
